"""`python -m krypton.audit`."""

from krypton.audit.app import main

main()
