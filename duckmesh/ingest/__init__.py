"""Ingest acceptance: request validation and group commit into the bus.

May import bus (protocol), catalog (models, types), errors, metrics and
supervisors. Knows nothing of HTTP.
"""
