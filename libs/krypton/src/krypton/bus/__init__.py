"""Krypton bus."""
