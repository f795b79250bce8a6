"""Krypton db."""
