"""File I/O: NIfTI, Learn2Reg displacement files, ITK displacement fields, QC figures.

Names are imported on first use (:mod:`common.lazy`): reading a NIfTI file does not load ITK or matplotlib.
"""

from __future__ import annotations

from common.lazy import lazy_attributes

_EXPORTS = {
    "convert": ("affine_2d_from_3d", "affine_to_itk_geometry", "centred_affine_to_physical", "itk_geometry_to_affine",
                "lps_flip", "mm_to_voxel", "physical_affine_to_centred", "physical_to_voxel", "spacing_from_affine",
                "voxel_to_mm", "voxel_to_physical"),
    "itk_affine": ("centred_affine_to_itk", "read_itk_affine", "write_itk_affine"),
    "itk_field": ("array_to_itk_image", "ddf_to_itk_field", "itk_field_to_ddf", "itk_image_to_array",
                  "read_itk_displacement", "write_itk_displacement"),
    "l2r": ("l2r_disp_name", "read_l2r_displacement", "write_l2r_displacement"),
    "nifti": ("ImageReadError", "atomic_path", "read_nifti", "write_nifti"),
    "qc": ("save_qc_figure",),
}  # fmt: skip

__getattr__, __dir__, __all__ = lazy_attributes(__name__, globals(), _EXPORTS)
