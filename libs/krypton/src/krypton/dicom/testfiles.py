"""The DICOM files pydicom ships, for conformance tests and demos.

`pydicom.data.get_testdata_files()` also tries to download about a hundred more files from
the internet, which is unreachable here and costs ~15 s per call; this looks at the packaged
directory only.
"""

from __future__ import annotations

from pathlib import Path

import pydicom.data

__all__ = ["pydicom_test_files", "pydicom_test_files_dir"]


def pydicom_test_files_dir() -> Path:
    """The `data/test_files` directory inside the installed pydicom package."""
    return Path(pydicom.data.__file__).resolve().parent / "test_files"


def pydicom_test_files() -> list[Path]:
    """The `.dcm` files of pydicom's `data/test_files`, sorted by name (not recursive)."""
    return sorted(pydicom_test_files_dir().glob("*.dcm"))
