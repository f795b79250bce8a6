"""Producer edge box: DIMSE in, store-and-forward to the region over a NATS leaf node."""
