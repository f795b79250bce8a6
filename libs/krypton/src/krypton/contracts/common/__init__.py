"""Contracts shared by several services."""
