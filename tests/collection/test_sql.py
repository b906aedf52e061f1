"""SQL sources against the machine's PostgreSQL (a fresh database per test)."""

import pytest
import sqlalchemy as sa

from operators.readers import Document, ReadOptions, query_sql
from operators.readers.sql import redacted
from tests.servers import free_port


def test_rows_become_documents_and_rows_without_text_are_rejected(pg_database):
    engine = sa.create_engine(pg_database)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE articles (id int PRIMARY KEY, title text, body text, lang text)"))
        connection.execute(sa.text(
            "INSERT INTO articles VALUES (1, 'Mirrors', 'Pick a mirror close to you.', 'en'), "
            "(2, 'Empty', NULL, 'en'), (3, 'Spiegel', 'Wähle einen Spiegel in deiner Nähe.', 'de')"
        ))
    engine.dispose()
    options = ReadOptions(text_field="body", id_field="id", title_field="title")
    records = list(query_sql(pg_database, "SELECT id, title, body, lang FROM articles ORDER BY id", options))
    first, missing, third = records
    assert isinstance(first, Document) and first.title == "Mirrors" and first.text == "Pick a mirror close to you."
    assert first.source_uri == f"{redacted(pg_database)}#id=1"
    assert first.metadata == {"id": 1, "title": "Mirrors", "lang": "en"}
    assert missing.reason == "missing_field" and "row 1" in missing.detail
    assert third.text == "Wähle einen Spiegel in deiner Nähe."


def test_password_never_appears_in_the_source_uri():
    assert redacted("postgresql+psycopg2://reader:s3cret@db.internal:5432/docs") == (
        "postgresql+psycopg2://reader@db.internal:5432/docs"
    )


def test_unreachable_server_is_a_clear_error_without_the_password():
    url = f"postgresql+psycopg2://reader:s3cret@127.0.0.1:{free_port()}/docs"
    with pytest.raises(ConnectionError, match="cannot connect") as error:
        list(query_sql(url, "SELECT 1 AS text", ReadOptions()))
    assert "s3cret" not in str(error.value) and "127.0.0.1" in str(error.value)


def test_a_failing_query_names_the_source(pg_database):
    with pytest.raises(RuntimeError, match="the query failed"):
        list(query_sql(pg_database, "SELECT text FROM no_such_table", ReadOptions()))
