"""Contracts of the authorize service (access policy): events, decisions, commands, API bodies."""
