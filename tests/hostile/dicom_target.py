"""The DICOM parsing path ingest runs on every upload, as one function for the fuzzers.

`parse(data)` does what `IngestPipeline._examine` does with a staged file: `read_header`, then
`extract` (identity resolution included), then encodes the extracted attributes as the bus
would. Its contract: it returns, or raises `DicomRejection`; any other exception is a bug.
"""

from __future__ import annotations

import msgspec

from krypton.dicom.errors import DicomRejection
from krypton.dicom.extract import extract
from krypton.dicom.header import read_header

__all__ = ["DOCUMENTED_ERRORS", "parse"]

DOCUMENTED_ERRORS = (DicomRejection,)
STRUCTURE = "330781196"
# Small bounds so that a fuzzer spends its time on parsing, not on reading big inputs.
_MAX_HEADER = 1024 * 1024


def parse(data: bytes) -> None:
    """Parse `data` as an upload; raises only `DicomRejection`."""
    header = read_header(data, max_header_bytes=_MAX_HEADER)
    extracted = extract(header, STRUCTURE, max_frames=1000)
    msgspec.json.encode([extracted.patient, extracted.study, extracted.series, extracted.instance])
