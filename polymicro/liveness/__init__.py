"""Liveness: heartbeats, liveness derived at read time, transitions recorded once."""
