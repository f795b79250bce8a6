"""The audit service: an append-only, hash-chained log of every access, and its query API."""
