"""Krypton auth."""
