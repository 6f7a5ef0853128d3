"""CPU/memory metrics: one entry per service, points stored one document each."""
