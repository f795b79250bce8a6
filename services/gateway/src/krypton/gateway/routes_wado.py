"""WADO-RS retrieval routes (study, series, instance, metadata, frames, rendered, thumbnail)."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter()
