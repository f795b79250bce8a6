"""Transcode request/reply contracts."""
