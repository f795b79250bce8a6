"""`python -m krypton.render`."""

from krypton.render.app import main

main()
