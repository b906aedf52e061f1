"""Readers: files, objects, web pages and SQL rows → normalized `Document`s, bad inputs → `Reject`s."""

from operators.readers.formats import MIME_TYPES, ReadOptions, format_for, read_stream
from operators.readers.records import REASONS, Document, Reject, Rejected
from operators.readers.sources import GlobFilter, SourceFile, read_source, walk_filesystem, walk_folder
from operators.readers.sql import query_sql
from operators.readers.web import fetch_web

__all__ = [
    "MIME_TYPES", "REASONS", "Document", "GlobFilter", "ReadOptions", "Reject", "Rejected", "SourceFile",
    "fetch_web", "format_for", "query_sql", "read_source", "read_stream", "walk_filesystem", "walk_folder",
]
