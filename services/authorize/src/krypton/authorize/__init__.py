"""Krypton authorize service: the access policy (care relationships, share codes, oppositions, break-the-glass) and its decisions."""
