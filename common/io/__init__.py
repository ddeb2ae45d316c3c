"""File I/O: NIfTI, Learn2Reg displacement files, ITK displacement fields, QC figures."""
