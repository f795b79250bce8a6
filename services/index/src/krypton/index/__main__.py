"""`python -m krypton.index`."""

from krypton.index.app import main

main()
