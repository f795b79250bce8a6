"""Krypton render and transcode service."""
