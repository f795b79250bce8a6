"""Krypton ingest service."""
