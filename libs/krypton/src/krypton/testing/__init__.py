"""Krypton testing."""
