"""`python -m krypton.gateway`."""

from krypton.gateway.main import main

main()
