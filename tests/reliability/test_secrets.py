"""Secrets never leak: recognisable values go in through the environment, a pipeline runs (once succeeding,
once failing) on a PostgreSQL-backed instance with S3 (moto) storage, then every place a secret could land is
searched: CLI output, every event, run config and tags, asset metadata, job snapshots, compute logs, a plain
dump of the whole Dagster database, and the stored outputs."""

import io
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import boto3
import dagster as dg
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from dagster._serdes import serialize_value

from tests.conftest import PG_ADMIN_URL, REPO

DAGSTER = Path(sys.executable).parent / "dagster"
TAG = uuid.uuid4().hex[:8]
SECRETS = {
    "AWS_ACCESS_KEY_ID": f"AKIALEAKCHECK{TAG.upper()}",
    "AWS_SECRET_ACCESS_KEY": f"aws-secret-leakcheck-{TAG}",
    "DATAMATE_MILVUS_TOKEN": f"milvus-token-leakcheck-{TAG}",
    "DATAMATE_LLM_API_KEY": f"llm-key-leakcheck-{TAG}",
    "DATAMATE_EMBEDDINGS_API_KEY": f"embeddings-key-leakcheck-{TAG}",
}
PG_PASSWORD = f"pg-password-leakcheck-{TAG}"


@pytest.fixture
def password_pg_url(pg_database):
    """A login role with a password owning nothing but its grants on the test database."""
    role = f"datamate_leak_{TAG}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    database = pg_database.rsplit("/", 1)[1]
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD '{PG_PASSWORD}'"))
        conn.execute(sa.text(f'GRANT ALL ON DATABASE "{database}" TO {role}'))
    on_db = sa.create_engine(pg_database, isolation_level="AUTOCOMMIT")
    with on_db.connect() as conn:
        conn.execute(sa.text(f"GRANT ALL ON SCHEMA public TO {role}"))
        conn.execute(sa.text("CREATE TABLE articles (id int PRIMARY KEY, body text)"))
        conn.execute(sa.text("INSERT INTO articles VALUES (1, 'Mirrors are listed on the website.')"))
        conn.execute(sa.text(f"GRANT SELECT ON articles TO {role}"))
    url = sa.make_url(pg_database).set(username=role, password=PG_PASSWORD)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with on_db.connect() as conn:
            conn.execute(sa.text(f"DROP OWNED BY {role}"))
        on_db.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f"REVOKE ALL ON DATABASE \"{database}\" FROM {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))
        admin.dispose()


def materialize(selection: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(DAGSTER), "asset", "materialize", "-m", "datamate_assets.definitions", "--select", selection],
        cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=600,
    )


def leaks(text: str, where: str) -> list[str]:
    found = [f"{name} in {where}" for name, value in SECRETS.items() if value in text]
    return found + ([f"Postgres password in {where}"] if PG_PASSWORD in text else [])


def test_no_secret_in_logs_events_run_config_metadata_or_storage(
    tmp_path, postgres_dagster_home, pg_database, password_pg_url, s3_endpoint, s3_bucket, monkeypatch
):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "guide.md").write_text("# Guide\n\nInstall packages with apt install.")
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    (datasets / "leaky.yaml").write_text(textwrap.dedent(f"""\
        name: leaky
        sources:
          - {{type: folder, path: "{folder}"}}
          - {{type: s3, url: "s3://{s3_bucket}/inbox/"}}
          - {{type: sql, url_env: LEAKY_SQL_URL, query: "SELECT id, body FROM articles", text_field: body}}
        """))
    # A failing run too: exceptions are where URLs and keys usually slip out.
    (datasets / "failing.yaml").write_text(textwrap.dedent("""\
        name: failing
        sources:
          - {type: sql, url_env: LEAKY_SQL_URL, query: "SELECT body FROM no_such_table"}
        """))
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                      aws_access_key_id=SECRETS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=SECRETS["AWS_SECRET_ACCESS_KEY"])
    s3.put_object(Bucket=s3_bucket, Key="inbox/note.txt", Body=b"Keep three generations of backups.")
    for name, value in {
        **SECRETS,
        "DAGSTER_PG_URL": password_pg_url,
        "LEAKY_SQL_URL": password_pg_url,
        "DATAMATE_HOME": str(tmp_path / "home"),
        "DATAMATE_DATASETS_DIR": str(datasets),
        "DATAMATE_STORAGE_URL": f"s3://{s3_bucket}/storage",
        "DATAMATE_S3_ENDPOINT_URL": s3_endpoint,
    }.items():
        monkeypatch.setenv(name, value)

    good = materialize("leaky/collected,leaky/collection_rejects")
    assert good.returncode == 0, good.stderr[-3000:]
    bad = materialize("failing/collected,failing/collection_rejects")
    assert bad.returncode != 0 and "no_such_table" in bad.stdout + bad.stderr

    found = leaks(good.stdout + good.stderr, "CLI output (success)")
    found += leaks(bad.stdout + bad.stderr, "CLI output (failure)")
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert len(runs) == 2
        for run in runs:
            found += leaks(serialize_value(run), f"run {run.run_id} (config, tags, origin)")
            for entry in instance.all_logs(run.run_id):
                found += leaks(serialize_value(entry), f"event {entry.dagster_event_type} of run {run.run_id}")
            if run.job_snapshot_id:
                found += leaks(serialize_value(instance.get_job_snapshot(run.job_snapshot_id)), "job snapshot")
            if run.execution_plan_snapshot_id:
                plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
                found += leaks(serialize_value(plan), "execution plan snapshot")
        for asset_key in instance.get_asset_keys():
            event = instance.get_latest_materialization_event(asset_key)
            if event is not None:
                found += leaks(serialize_value(event), f"metadata of {asset_key.to_user_string()}")

    # Everything on disk under DAGSTER_HOME and DATAMATE_HOME: compute logs, local artifacts.
    for home in (postgres_dagster_home, tmp_path / "home"):
        for path in home.rglob("*") if home.exists() else []:
            if path.is_file():
                found += leaks(path.read_bytes().decode("utf-8", "replace"), str(path))
    # The whole Dagster database as text (covers what the UI reads).
    dump = subprocess.run(["pg_dump", "--data-only", "-h", "127.0.0.1", "-U", "postgres",
                           pg_database.rsplit("/", 1)[1]], capture_output=True, text=True, timeout=300)
    assert dump.returncode == 0, dump.stderr
    found += leaks(dump.stdout, "pg_dump of the Dagster database")
    # The stored outputs (collected metadata, rejects details), decompressed: the Delta tables' Parquet data files
    # and their _delta_log JSON commits (which carry the run id and the writer's parameters).
    stored = s3.list_objects_v2(Bucket=s3_bucket, Prefix="storage/").get("Contents", [])
    assert any(item["Key"].startswith("storage/leaky/collected/_delta_log/") for item in stored)
    assert any(item["Key"].startswith("storage/leaky/collected/") and item["Key"].endswith(".parquet")
               for item in stored)
    for item in stored:
        body = s3.get_object(Bucket=s3_bucket, Key=item["Key"])["Body"].read()
        text = str(pq.read_table(io.BytesIO(body)).to_pylist()) if item["Key"].endswith(".parquet") else body.decode(
            "utf-8", "replace")
        found += leaks(text, f"s3://{s3_bucket}/{item['Key']}")
    assert not found, "\n".join(sorted(set(found)))
    # Positive control: what the runs did is readable in the places searched (the search can find things).
    assert f"s3://{s3_bucket}/storage/leaky/collected" in dump.stdout
    assert "no_such_table" in dump.stdout


def test_no_secret_in_a_dataset_components_definitions(tmp_path, monkeypatch):
    """The component path: `{{ env.X }}` templates fill in the non-secret parts of a defs.yaml when it loads, a SQL
    source names its URL's variable, the resources take their keys by reference; the whole repository snapshot
    (what the webserver and every run see) holds no secret, and a template naming a secret is refused."""
    from dagster._core.remote_representation.external_data import RepositorySnap

    from datamate_assets.definitions import error_text

    for name, value in {**SECRETS, "LEAKY_SQL_URL": f"postgresql://reader:{PG_PASSWORD}@127.0.0.1/db",
                        "DOCS_DIR": str(tmp_path), "DATAMATE_HOME": str(tmp_path / "home"),
                        "DATAMATE_STORAGE_URL": "s3://datamate/storage",
                        "DATAMATE_MILVUS_URI": "http://127.0.0.1:19530"}.items():
        monkeypatch.setenv(name, value)
    module = f"secretproj_{TAG}"
    folder = tmp_path / "project" / module / "defs" / "leaky"
    folder.mkdir(parents=True)
    (tmp_path / "project" / "pyproject.toml").write_text(
        f'[project]\nname = "{module}"\nversion = "0"\n[tool.dg]\ndirectory_type = "project"\n'
        f'[tool.dg.project]\nroot_module = "{module}"\n')
    for package in (folder.parents[1], folder.parent):
        (package / "__init__.py").write_text("")
    defs_yaml = textwrap.dedent("""\
        type: datamate_assets.DatasetComponent
        attributes:
          sources:
            - {type: folder, path: "{{ env.DOCS_DIR }}"}
            - {type: sql, url_env: LEAKY_SQL_URL, query: "SELECT id, body AS text FROM articles"}
          cleaning: {process: [{text_length_filter: {min_len: 10}}]}
          index: {chunk_size: 200}
          synthesis: {max_records: 1}
    """)
    (folder / "defs.yaml").write_text(defs_yaml)
    monkeypatch.syspath_prepend(str(tmp_path / "project"))
    defs = dg.load_from_defs_folder(path_within_project=tmp_path / "project")
    repository = defs.get_repository_def()
    assert dg.AssetKey(["leaky", "synthesized"]) in repository.asset_graph.get_all_asset_keys()
    assert leaks(serialize_value(RepositorySnap.from_def(repository)), "repository snapshot") == []

    (folder / "defs.yaml").write_text(defs_yaml.replace('"{{ env.DOCS_DIR }}"', '"{{ env.AWS_SECRET_ACCESS_KEY }}"'))
    with pytest.raises(Exception) as raised:
        dg.load_from_defs_folder(path_within_project=tmp_path / "project")
    assert "AWS_SECRET_ACCESS_KEY }} would put a secret" in error_text(raised.value)
