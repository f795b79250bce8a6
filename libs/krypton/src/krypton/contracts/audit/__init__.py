"""Audit contracts: the audit event every service publishes, checkpoints, and audit queries."""
