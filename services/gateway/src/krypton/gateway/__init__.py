"""Krypton gateway service."""
