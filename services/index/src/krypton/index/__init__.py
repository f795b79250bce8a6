"""Krypton index service."""
