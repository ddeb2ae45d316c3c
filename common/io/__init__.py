"""File I/O: NIfTI, Learn2Reg displacement files, ITK displacement fields, QC figures.

Names are imported on first use (:mod:`common.lazy`): reading a NIfTI file does not load ITK or matplotlib.
"""

from __future__ import annotations

from common.lazy import lazy_attributes

_WHERE = {
    "ImageReadError": "nifti",
    "affine_2d_from_3d": "convert",
    "affine_to_itk_geometry": "convert",
    "array_to_itk_image": "itk_field",
    "atomic_path": "nifti",
    "centred_affine_to_itk": "itk_affine",
    "centred_affine_to_physical": "convert",
    "ddf_to_itk_field": "itk_field",
    "itk_field_to_ddf": "itk_field",
    "itk_geometry_to_affine": "convert",
    "itk_image_to_array": "itk_field",
    "l2r_disp_name": "l2r",
    "lps_flip": "convert",
    "mm_to_voxel": "convert",
    "physical_affine_to_centred": "convert",
    "physical_to_voxel": "convert",
    "read_itk_affine": "itk_affine",
    "read_itk_displacement": "itk_field",
    "read_l2r_displacement": "l2r",
    "read_nifti": "nifti",
    "save_qc_figure": "qc",
    "spacing_from_affine": "convert",
    "voxel_to_mm": "convert",
    "voxel_to_physical": "convert",
    "write_itk_affine": "itk_affine",
    "write_itk_displacement": "itk_field",
    "write_l2r_displacement": "l2r",
    "write_nifti": "nifti",
}

__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_attributes(__name__, globals(), _WHERE)
