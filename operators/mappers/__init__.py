"""Mappers: text in, text out. Every module here registers its operators on import."""
