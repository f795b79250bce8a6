"""Krypton contracts."""
