"""Seed inputs for the DICOM fuzzers: real files of several transfer syntaxes, small ones."""

from __future__ import annotations

from functools import cache

from krypton.dicom.synthetic import Population, render_instances
from krypton.dicom.testfiles import pydicom_test_files

__all__ = ["seeds"]

_MAX_SEED = 64 * 1024


@cache
def seeds() -> tuple[bytes, ...]:
    """pydicom's test files under 64 KiB plus a few synthetic instances (Latin-1, UTF-8)."""
    found = [p.read_bytes() for p in sorted(pydicom_test_files()) if p.stat().st_size <= _MAX_SEED]
    population = Population(3, 50)
    for index in range(3):
        study = population.study(index, max_instances_per_series=1)
        found.append(next(render_instances(study, rows=8, cols=8, bits=8)))
    return tuple(found)
