"""Krypton storage."""
