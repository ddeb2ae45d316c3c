"""File I/O: NIfTI, Learn2Reg displacement files, ITK displacement fields, QC figures."""

from __future__ import annotations

from common.io.convert import (
    affine_2d_from_3d,
    affine_to_itk_geometry,
    centred_affine_to_physical,
    itk_geometry_to_affine,
    lps_flip,
    mm_to_voxel,
    physical_affine_to_centred,
    physical_to_voxel,
    spacing_from_affine,
    voxel_to_mm,
    voxel_to_physical,
)
from common.io.itk_field import (
    array_to_itk_image,
    centred_affine_to_itk,
    ddf_to_itk_field,
    itk_field_to_ddf,
    itk_image_to_array,
    read_itk_affine,
    read_itk_displacement,
    write_itk_affine,
    write_itk_displacement,
)
from common.io.l2r import l2r_disp_name, read_l2r_displacement, write_l2r_displacement
from common.io.nifti import ImageReadError, atomic_path, read_nifti, write_nifti
from common.io.qc import save_qc_figure

__all__ = [
    "ImageReadError",
    "affine_2d_from_3d",
    "affine_to_itk_geometry",
    "array_to_itk_image",
    "atomic_path",
    "centred_affine_to_itk",
    "centred_affine_to_physical",
    "ddf_to_itk_field",
    "itk_field_to_ddf",
    "itk_geometry_to_affine",
    "itk_image_to_array",
    "l2r_disp_name",
    "lps_flip",
    "mm_to_voxel",
    "physical_affine_to_centred",
    "physical_to_voxel",
    "read_itk_affine",
    "read_itk_displacement",
    "read_l2r_displacement",
    "read_nifti",
    "save_qc_figure",
    "spacing_from_affine",
    "voxel_to_mm",
    "voxel_to_physical",
    "write_itk_affine",
    "write_itk_displacement",
    "write_l2r_displacement",
    "write_nifti",
]
