"""Filters: compute stats, keep or drop with a reason. Every module here registers its operators on import."""
