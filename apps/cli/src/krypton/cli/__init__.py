"""The krypton command."""
