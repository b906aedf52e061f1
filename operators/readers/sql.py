"""Rows of a SQL query over a SQLAlchemy URL as documents, streamed with a server-side cursor."""

from collections.abc import Iterator

import sqlalchemy as sa

from operators.readers.formats import ReadOptions, record_to_document
from operators.readers.records import Document, Reject


def redacted(url: str) -> str:
    """The URL without its password: safe for source_uri, logs and metadata."""
    # URL.set(password=None) keeps the password (None means "unchanged"); the NamedTuple copy drops it.
    return sa.make_url(url)._replace(password=None).render_as_string(hide_password=False)


def query_sql(url: str, query: str, options: ReadOptions) -> Iterator[Document | Reject]:
    """One document per row: `text_field` is the text column, the other columns go to metadata.

    A server that cannot be reached or a query that fails raises (the whole source is wrong, not one row).
    """
    where = redacted(url)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            try:
                result = connection.execution_options(stream_results=True, yield_per=500).execute(sa.text(query))
            except sa.exc.DBAPIError as error:
                raise RuntimeError(f"SQL source {where}: the query failed: {error.orig}") from None
            for number, row in enumerate(result.mappings()):
                yield record_to_document(dict(row), where, f"row={number}", "sql", options)
    except sa.exc.OperationalError as error:
        raise ConnectionError(f"SQL source {where}: cannot connect: {error.orig}") from None
    finally:
        engine.dispose()
