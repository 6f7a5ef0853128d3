"""Ingest: OTLP/HTTP logs and metrics, and the Loki push API, mapped onto the logs and
metrics services.  No models of its own: protocol quirks stay in this package."""
