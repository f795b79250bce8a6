"""Index service contracts: QIDO-RS requests and replies over NATS request/reply."""
