"""Ingest contracts."""
