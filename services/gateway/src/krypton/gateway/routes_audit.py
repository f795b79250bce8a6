"""Audit APIs: a patient's access history, DPO queries, exports."""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["router"]

router = APIRouter()
