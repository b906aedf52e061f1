"""Shared fixtures: real servers on loopback (moto's S3 server, the machine's PostgreSQL)."""

import os
import shutil
import sys
import uuid
from pathlib import Path

import boto3
import pytest
import sqlalchemy as sa

from tests.servers import free_port, server_process

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("DATAMATE_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret-key"}


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> str:
    """moto's S3 server on a free loopback port (MinIO's server cannot be installed here)."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with server_process([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port, log):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch) -> str:
    """A fresh bucket; the S3 keys are set in the environment as users set them."""
    for name, value in S3_KEYS.items():
        monkeypatch.setenv(name, value)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", **_boto_keys()).create_bucket(Bucket=bucket)
    return bucket


def _boto_keys() -> dict:
    return {
        "aws_access_key_id": S3_KEYS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_KEYS["AWS_SECRET_ACCESS_KEY"],
    }


@pytest.fixture
def pg_database() -> str:
    """A fresh database in the machine's PostgreSQL, dropped afterwards; yields its SQLAlchemy URL."""
    name = f"datamate_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_dagster_home(tmp_path, pg_database, monkeypatch) -> Path:
    """A DAGSTER_HOME using deploy/dagster.yaml (PostgreSQL storage) on a fresh database."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_URL", pg_database)
    return home


@pytest.fixture(scope="module")
def local_ray():
    """Ray started in this process with 2 CPUs; the `ray` resource reuses it."""
    import ray

    # A busy 2-core machine can miss Ray's fixed node start-up deadline: try again rather than fail the module.
    for attempt in range(3):
        try:
            ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
            break
        except Exception:  # Ray raises a bare Exception for "node timed out during startup"
            ray.shutdown()
            if attempt == 2:
                raise
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory) -> str:
    """The packaged SmolLM2 model behind `python -m datamate_resources.llm_server`, one per session (loading the
    weights takes a while on a busy CPU); yields its base URL, ending in /v1."""
    port = free_port()
    log = tmp_path_factory.mktemp("llm_server") / "server.log"
    args = [sys.executable, "-m", "datamate_resources.llm_server", "--port", str(port)]
    # Generous start timeout: the weights are de-quantized at start and CI's CPUs are shared.
    with server_process(args, port, log, timeout=600, cwd=REPO):
        yield f"http://127.0.0.1:{port}/v1"
