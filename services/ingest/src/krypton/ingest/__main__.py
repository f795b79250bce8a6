"""`python -m krypton.ingest`."""

from krypton.ingest.app import main

main()
