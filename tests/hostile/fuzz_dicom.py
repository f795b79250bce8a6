"""Coverage-guided fuzzing of the DICOM parsing path with atheris (not run in CI).

    .venv/bin/python tests/hostile/fuzz_dicom.py -atheris_runs=200000 [-max_len=65536] [corpus_dir]

Seeds come from pydicom's test files and synthetic instances (`seeds.py`); libFuzzer options
follow the script's name. A crash is any exception other than `DicomRejection`; libFuzzer saves
the input as `crash-<sha1>` in the current directory: reproduce it with
`.venv/bin/python -c "import sys; sys.path.insert(0, 'tests/hostile'); from dicom_target import parse; parse(open('crash-...', 'rb').read())"`.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    sys.path.insert(0, str(Path(__file__).parent))
    from dicom_target import DOCUMENTED_ERRORS, parse
    from seeds import seeds


def test_one_input(data: bytes) -> None:
    """libFuzzer's entry point."""
    with contextlib.suppress(DOCUMENTED_ERRORS):
        parse(data)


def main() -> None:
    """Write the seeds to a corpus directory (unless one is given) and fuzz."""
    argv = list(sys.argv)
    if not any(not a.startswith("-") for a in argv[1:]):
        corpus = Path(tempfile.mkdtemp(prefix="krypton-fuzz-"))
        for n, seed in enumerate(seeds()):
            (corpus / f"seed-{n}").write_bytes(seed)
        argv.append(str(corpus))
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
