"""Pieces every domain package shares: fields, time handling, pagination, base schemas."""
