"""Krypton telemetry."""
