"""Contracts of the producer edge box."""
