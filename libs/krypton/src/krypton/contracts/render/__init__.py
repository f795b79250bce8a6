"""Render request/reply contracts."""
