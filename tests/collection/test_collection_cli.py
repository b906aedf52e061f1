"""End to end: `dagster asset materialize` on a PostgreSQL-backed instance, with an S3 endpoint (moto) as both
source and storage, the local PostgreSQL as a SQL source, a loopback HTTP site and a local folder."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import boto3
import dagster as dg
import pytest
import sqlalchemy as sa

from datamate_resources import tables
from datamate_resources.storage import ObjectStore
from tests.collection.web_server import serve_site
from tests.conftest import REPO, S3_KEYS

DAGSTER = Path(sys.executable).parent / "dagster"
COLLECTED = dg.AssetKey(["itest", "collected"])
REJECTS = dg.AssetKey(["itest", "collection_rejects"])


@pytest.fixture
def environment(tmp_path, postgres_dagster_home, pg_database, s3_endpoint, s3_bucket, monkeypatch):
    """Every source filled with a few documents and one bad input each; the env the CLI runs with."""
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "guide.md").write_text("# Guide\n\nInstall packages with apt install.")
    (folder / "obsolete.txt").write_text("This page will be deleted before the third run.")
    (folder / "faq.jsonl").write_text('{"text": "What is dpkg? The low-level package tool."}\n{broken\n')
    (folder / "escape.txt").symlink_to("/etc/hostname")

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                      aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"])
    s3.put_object(Bucket=s3_bucket, Key="sources/notes/backup.txt", Body=b"Keep three generations of backups.")
    s3.put_object(Bucket=s3_bucket, Key="sources/notes/empty.txt", Body=b"")

    engine = sa.create_engine(pg_database)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE articles (id int PRIMARY KEY, body text)"))
        connection.execute(sa.text("INSERT INTO articles VALUES (1, 'Mirrors are listed on the website.'), "
                                   "(2, 'Use deb.debian.org as the mirror.')"))
    engine.dispose()

    with serve_site() as site:
        datasets = tmp_path / "datasets"
        datasets.mkdir()
        (datasets / "itest.yaml").write_text(textwrap.dedent(f"""\
            name: itest
            sources:
              - {{type: folder, path: "{folder}"}}
              - {{type: s3, url: "s3://{s3_bucket}/sources/"}}
              - {{type: web, urls: ["{site}/pinning", "{site}/missing"]}}
              - {{type: sql, url_env: ITEST_SQL_URL, query: "SELECT id, body FROM articles", text_field: body,
                  id_field: id}}
            """))
        env = {
            "DATAMATE_HOME": str(tmp_path / "home"),
            "DATAMATE_DATASETS_DIR": str(datasets),
            "DATAMATE_STORAGE_URL": f"s3://{s3_bucket}/storage",
            "DATAMATE_S3_ENDPOINT_URL": s3_endpoint,
            "ITEST_SQL_URL": pg_database,
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        yield {"folder": folder, "s3": s3, "bucket": s3_bucket, "sql": pg_database, "site": site}


def materialize() -> str:
    result = subprocess.run(
        [str(DAGSTER), "asset", "materialize", "-m", "datamate_assets.definitions",
         "--select", "itest/collected,itest/collection_rejects"],
        cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    return output


def latest_metadata(instance: dg.DagsterInstance, asset_key: dg.AssetKey) -> dict:
    event = instance.get_latest_materialization_event(asset_key)
    return {name: value.value for name, value in event.asset_materialization.metadata.items()}


def counts(metadata: dict) -> dict:
    return {name: metadata[name] for name in ("inputs", "collected", "new", "changed", "unchanged", "removed",
                                              "rejected")}


def test_collection_from_the_cli_is_incremental(environment):
    first_output = materialize()
    storage = ObjectStore(
        url=os.environ["DATAMATE_STORAGE_URL"], endpoint_url=os.environ["DATAMATE_S3_ENDPOINT_URL"],
        aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
    )
    collected = tables.read_stage(storage, "itest", "collected")
    rejects = tables.read_stage(storage, "itest", "collection_rejects")

    # 2 folder documents + 1 JSONL line, 1 S3 object, 1 web page, 2 SQL rows.
    uris = collected.column("source_uri").to_pylist()
    assert len(uris) == 7
    assert {uri.split(":", 1)[0] for uri in uris} == {"file", "s3", "http", "postgresql+psycopg2"}
    assert f"{environment['site']}/pinning" in uris
    reasons = {row["source_uri"]: row["reason"] for row in rejects.select(["source_uri", "reason"]).to_pylist()}
    folder = environment["folder"].as_uri()
    assert reasons == {
        f"{folder}/escape.txt": "link",
        f"{folder}/faq.jsonl#line=2": "parse_error",
        f"s3://{environment['bucket']}/sources/notes/empty.txt": "empty",
        f"{environment['site']}/missing": "http_status",
    }

    with dg.DagsterInstance.get() as instance:
        assert instance.get_latest_materialization_event(COLLECTED) is not None  # in PostgreSQL
        first = latest_metadata(instance, COLLECTED)
        assert counts(first) == {"inputs": 11, "collected": 7, "new": 7, "changed": 0, "unchanged": 0,
                                 "removed": 0, "rejected": 4}
        assert latest_metadata(instance, REJECTS)["dagster/row_count"] == 4
        assert first["dagster/row_count"] == 7

    # Unchanged sources: nothing new, and the original collected_at is kept.
    materialize()
    with dg.DagsterInstance.get() as instance:
        assert counts(latest_metadata(instance, COLLECTED)) == {
            "inputs": 11, "collected": 0, "new": 0, "changed": 0, "unchanged": 7, "removed": 0, "rejected": 4,
        }
    again = tables.read_stage(storage, "itest", "collected")

    def collected_at(table):
        return dict(zip(table["source_uri"].to_pylist(), table["collected_at"].to_pylist(), strict=True))

    assert collected_at(again) == collected_at(collected)

    # One new S3 object, one changed SQL row, one deleted local file.
    environment["s3"].put_object(Bucket=environment["bucket"], Key="sources/notes/new.md", Body=b"# New\n\nfresh")
    engine = sa.create_engine(environment["sql"])
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE articles SET body = 'Mirrors are listed at www.debian.org/mirror.' "
                                   "WHERE id = 1"))
    engine.dispose()
    (environment["folder"] / "obsolete.txt").unlink()
    materialize()
    with dg.DagsterInstance.get() as instance:
        assert counts(latest_metadata(instance, COLLECTED)) == {
            "inputs": 11, "collected": 2, "new": 1, "changed": 1, "unchanged": 5, "removed": 1, "rejected": 4,
        }
        runs = instance.get_runs()
        assert len(runs) == 3 and all(run.is_success for run in runs)
    final = tables.read_stage(storage, "itest", "collected")
    assert final.num_rows == 7
    assert S3_KEYS["AWS_SECRET_ACCESS_KEY"] not in first_output
    texts = dict(zip(final["source_uri"].to_pylist(), final["text"].to_pylist(), strict=True))
    assert "Mirrors are listed at www.debian.org/mirror." in texts.values()  # the changed row was merged in
    assert f"{folder}/obsolete.txt" not in texts  # the deleted file's row was deleted

    # Run 1 wrote version 0, run 2 changed nothing (no version), run 3 merged its changes as version 1;
    # version 0 still reads as the first run left it.
    assert tables.current(storage, "itest", "collected").version == 1
    first_version = tables.read_stage(storage, "itest", "collected", version=0)
    assert sorted(first_version["source_uri"].to_pylist()) == sorted(uris)
