"""`python -m krypton.edge`: the edge box."""

from krypton.edge.app import main

main()
