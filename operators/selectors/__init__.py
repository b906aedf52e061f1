"""Selectors: dataset-level choice of records from field values. Every module here registers on import."""
