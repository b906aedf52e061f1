"""The production topology as separate processes, driven as the UI drives it.

`ray start --head` + one `ray start --address` worker, the machine's PostgreSQL as Dagster's storage, an S3
endpoint (moto), the Milvus standalone server, `dagster api grpc` serving the code location, and
`dagster-webserver` + `dagster-daemon` on a workspace pointing at that gRPC server. The demo dataset's
pipeline job (its whole asset group, so every stage that exists is included) is launched through the
webserver's GraphQL API; the test waits for success, then checks that the Ray tasks ran on the worker node
(the head has no CPUs, the run process is not a Ray node), that every table output is in the S3 bucket with
the row count Dagster recorded, and that the indexed chunks are in Milvus.
"""

import time
from pathlib import Path

import dagster as dg
import fsspec
import pyarrow.parquet as pq
import pytest
import yaml
from dagster_graphql import DagsterGraphQLClient
from pymilvus import MilvusClient

from datamate_resources.milvus import collection_name
from tests.conftest import BIN, REPO, S3_KEYS
from tests.deploy.topology import background_process, milvus_standalone, ray_cluster
from tests.servers import free_port, server_process

DATASET = "debian_docs"
JOB = f"{DATASET}_pipeline"
LOCATION = "datamate"
RUN_TIMEOUT = 2400  # the full pipeline includes the local LLM stages on a 2-core machine
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}

pytestmark = pytest.mark.timeout(RUN_TIMEOUT + 900)


def demo_project(root: Path) -> Path:
    """The demo dataset spec, its cleaning sent to Ray; `data/` beside `datasets/` as in the repository."""
    spec = yaml.safe_load((REPO / "datasets" / f"{DATASET}.yaml").read_text())
    if "cleaning" in spec:
        spec["cleaning"]["executor"] = "ray"
    (root / "datasets").mkdir(parents=True)
    (root / "datasets" / f"{DATASET}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (root / "data").symlink_to(REPO / "data")
    return root / "datasets"


def wait_for_run(client: DagsterGraphQLClient, run_id: str) -> dg.DagsterRunStatus:
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        status = client.get_run_status(run_id)
        if status in FINISHED:
            return status
        time.sleep(5)
    raise TimeoutError(f"run {run_id} did not finish within {RUN_TIMEOUT}s")


def failure_report(instance: dg.DagsterInstance, run_id: str) -> str:
    lines = []
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is not None and event.is_failure:
            lines.append(f"{event.step_key}: {event.event_specific_data}")
    return "\n".join(lines[-10:])


def test_pipeline_runs_on_the_production_topology(tmp_path, postgres_dagster_home, s3_endpoint, s3_bucket):
    logs = tmp_path / "logs"
    logs.mkdir()
    datasets_dir = demo_project(tmp_path / "project")
    grpc_port, web_port = free_port(), free_port()
    (tmp_path / "workspace.yaml").write_text(yaml.safe_dump({"load_from": [
        {"grpc_server": {"host": "127.0.0.1", "port": grpc_port, "location_name": LOCATION}},
    ]}))

    with ray_cluster(workers=1, cpus_per_worker=2, logs=logs) as ray, \
            milvus_standalone(tmp_path / "milvus", logs) as milvus_uri:
        env = {
            "DATAMATE_HOME": str(tmp_path / "datamate_home"),
            "DATAMATE_DATASETS_DIR": str(datasets_dir),
            "DATAMATE_STORAGE_URL": f"s3://{s3_bucket}/datamate",
            "DATAMATE_S3_ENDPOINT_URL": s3_endpoint,
            "DATAMATE_MILVUS_URI": milvus_uri,
            "DATAMATE_RAY_ADDRESS": ray.address,
            "RAY_AUTH_MODE": "disabled",
        }
        grpc = [str(BIN / "dagster"), "api", "grpc", "-m", "datamate_assets.definitions",
                "-h", "127.0.0.1", "-p", str(grpc_port)]
        web = [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(web_port),
               "-w", str(tmp_path / "workspace.yaml")]
        daemon = [str(BIN / "dagster-daemon"), "run", "-w", str(tmp_path / "workspace.yaml")]
        # The runs are subprocesses of the code server (DefaultRunLauncher): it carries the settings.
        with server_process(grpc, grpc_port, logs / "grpc.log", timeout=300, env=env, cwd=REPO), \
                server_process(web, web_port, logs / "webserver.log", timeout=300, cwd=tmp_path), \
                background_process(daemon, logs / "daemon.log", cwd=tmp_path):
            client = DagsterGraphQLClient("127.0.0.1", port_number=web_port)
            run_id = client.submit_job_execution(JOB, repository_location_name=LOCATION,
                                                 repository_name="__repository__")
            status = wait_for_run(client, run_id)
        instance = dg.DagsterInstance.get()
        assert status == dg.DagsterRunStatus.SUCCESS, failure_report(instance, run_id)
        materialized = materializations(instance, run_id)
        stages = {key.path[-1] for key in materialized}
        print(f"\nstages materialized through the topology: {sorted(stages)}")
        check_outputs_in_s3(materialized, s3_endpoint)
        if "cleaned" in stages:
            tasks = ray_tasks(ray.dashboard_url)
            assert tasks["worker"] and not tasks["elsewhere"], tasks
        if "indexed" in stages:
            check_chunks_in_milvus(milvus_uri, materialized[dg.AssetKey([DATASET, "chunks"])]["dagster/row_count"])


def materializations(instance: dg.DagsterInstance, run_id: str) -> dict[dg.AssetKey, dict]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    result = {}
    for record in records:
        materialization = record.event_log_entry.asset_materialization
        result[materialization.asset_key] = {k: v.value for k, v in materialization.metadata.items()}
    return result


def ray_tasks(dashboard_url: str) -> dict[str, list[str]]:
    """Finished Ray tasks by where they ran: on the worker node, or anywhere else (the head has no CPUs)."""
    from ray.util.state import list_nodes, list_tasks

    worker_nodes = {node.node_id for node in list_nodes(address=dashboard_url) if not node.is_head_node}
    placed: dict[str, list[str]] = {"worker": [], "elsewhere": []}
    for task in list_tasks(address=dashboard_url, filters=[("state", "=", "FINISHED")], limit=10_000):
        placed["worker" if task.node_id in worker_nodes else "elsewhere"].append(task.name)
    return placed


def check_outputs_in_s3(materialized: dict[dg.AssetKey, dict], s3_endpoint: str) -> None:
    """Every table output is a Parquet object in the bucket with the row count Dagster recorded."""
    fs = fsspec.filesystem("s3", endpoint_url=s3_endpoint, key=S3_KEYS["AWS_ACCESS_KEY_ID"],
                           secret=S3_KEYS["AWS_SECRET_ACCESS_KEY"], use_listings_cache=False)
    tables = {key: meta for key, meta in materialized.items() if "uri" in meta}
    assert tables, f"no table output recorded: {materialized}"
    for key, meta in tables.items():
        assert meta["uri"].startswith("s3://"), (key, meta["uri"])
        with fs.open(meta["uri"], "rb") as f:
            rows = pq.ParquetFile(f).metadata.num_rows
        assert rows == meta["dagster/row_count"], (key, rows, meta["dagster/row_count"])


def check_chunks_in_milvus(milvus_uri: str, chunks: int) -> None:
    client = MilvusClient(uri=milvus_uri)
    try:
        rows = client.query(collection_name(DATASET), filter="", output_fields=["count(*)"])[0]["count(*)"]
    finally:
        client.close()
    assert rows == chunks
