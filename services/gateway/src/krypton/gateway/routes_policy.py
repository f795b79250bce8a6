"""Access policy APIs: care relationships, share codes, oppositions, break-the-glass, admin."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter()
