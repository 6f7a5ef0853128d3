"""Logs: entries pushed by services, searched newest first."""
