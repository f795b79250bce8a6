"""`python -m krypton.authorize`."""

from krypton.authorize.app import main

main()
