"""Shared registration toolkit of the MONAI registration zoo."""
