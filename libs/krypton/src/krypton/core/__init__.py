"""Krypton core."""
