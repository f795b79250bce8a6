"""Krypton dicom."""
