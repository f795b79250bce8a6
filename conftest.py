"""Root conftest: real-server fixtures for every test in the workspace."""

pytest_plugins = ["krypton.testing.fixtures"]
