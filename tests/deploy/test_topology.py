"""The production topology as separate processes, driven as the UI drives it.

`ray start --head` + one `ray start --address` worker (on loopback, see topology.py), the machine's PostgreSQL
as Dagster's storage, an S3 endpoint (moto), the Milvus standalone server, `dagster api grpc` serving the code
location, and `dagster-webserver` + `dagster-daemon` on a workspace pointing at that gRPC server. The demo
dataset's pipeline job (its whole asset group) is launched through the webserver's GraphQL API with
`cleaning.executor: ray` and `index.executor: ray`; the test waits for success, then checks that the cleaning
and the embedding ran as Ray tasks on the worker node (Ray's state API; the head has no CPUs and the run
process is only a driver), that every table
output is in the S3 bucket with the row count Dagster recorded, and that Milvus holds one vector per chunk.

The LLM endpoint is a separate process too: the OpenAI-compatible server of `datamate_resources.llm_server`
serving the packaged model. To keep the run to minutes on 2 cores, the spec copy synthesizes and judges two
records and annotates with `labeler: embeddings`; it leaves out `automation:` and stops the sensors before
the daemon starts, so that the daemon only dequeues this run (QueuedRunCoordinator) and no sensor-launched
run competes with it. See docs/production.md.
"""

import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster_graphql import DagsterGraphQLClient
from pymilvus import MilvusClient

from datamate_resources import tables
from datamate_resources.io_manager import VERSION_KEY
from datamate_resources.milvus import collection_name
from datamate_resources.storage import ObjectStore
from tests.conftest import BIN, REPO, S3_KEYS
from tests.deploy.topology import milvus_standalone, ray_cluster
from tests.servers import background_process, free_port, server_process

DATASET = "debian_docs"
JOB = f"{DATASET}_pipeline"
LOCATION = "datamate"
RUN_TIMEOUT = 1200  # a safety net, not a measurement: the run takes a few minutes on a loaded 2-core machine
EXPECTED_STAGES = {"collected", "cleaned", "cleaning_drops", "chunks", "annotated", "indexed", "synthesized",
                   "evaluation", "retrieval_eval"}
SERVED_MODEL = "SmolLM2-135M-Instruct.Q4_1"
TASK_LIMIT = 10_000  # the most Ray's state API returns per query (RAY_MAX_LIMIT_FROM_API_SERVER)
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}

# e2e: the whole production topology as processes; `make test-e2e` (too heavy for CI's 2 cores).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(RUN_TIMEOUT + 600)]


def demo_project(root: Path) -> Path:
    """The demo dataset spec, its cleaning sent to Ray; `data/` beside `datasets/` as in the repository."""
    spec = yaml.safe_load((REPO / "datamate_assets" / "defs" / DATASET / "defs.yaml").read_text())["attributes"]
    spec["cleaning"]["executor"] = "ray"
    spec["index"]["executor"] = "ray"
    spec["annotation"]["labeler"] = "embeddings"
    spec["synthesis"]["max_records"] = 2
    spec["evaluation"]["max_judged"] = 2
    spec.pop("automation")
    (root / "datasets").mkdir(parents=True)
    (root / "datasets" / f"{DATASET}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    seed_file = spec["synthesis"]["self_instruct"]["seed_file"]  # relative to the spec, as beside its defs.yaml
    (root / "datasets" / seed_file).symlink_to(REPO / "datamate_assets" / "defs" / DATASET / seed_file)
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
    grpc_port, web_port, llm_port = free_port(), free_port(), free_port()
    (tmp_path / "workspace.yaml").write_text(yaml.safe_dump({"load_from": [
        {"grpc_server": {"host": "127.0.0.1", "port": grpc_port, "location_name": LOCATION}},
    ]}))

    llm = [sys.executable, "-m", "datamate_resources.llm_server", "--port", str(llm_port)]
    with ray_cluster(workers=1, cpus_per_worker=2, logs=logs) as ray, \
            milvus_standalone(logs / "milvus") as milvus_uri, \
            server_process(llm, llm_port, logs / "llm.log", timeout=600, cwd=REPO):
        env = {
            "DATAMATE_HOME": str(tmp_path / "datamate_home"),
            "DATAMATE_DATASETS_DIR": str(datasets_dir),
            "DATAMATE_STORAGE_URL": f"s3://{s3_bucket}/datamate",
            "DATAMATE_S3_ENDPOINT_URL": s3_endpoint,
            "DATAMATE_MILVUS_URI": milvus_uri,
            "DATAMATE_RAY_ADDRESS": ray.address,
            "DATAMATE_LLM_BASE_URL": f"http://127.0.0.1:{llm_port}/v1",
            "DATAMATE_LLM_MODEL": SERVED_MODEL,
            "RAY_AUTH_MODE": "disabled",
        }
        grpc = [str(BIN / "dagster"), "api", "grpc", "-m", "datamate_assets.definitions",
                "-h", "127.0.0.1", "-p", str(grpc_port)]
        web = [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(web_port),
               "-w", str(tmp_path / "workspace.yaml")]
        daemon = [str(BIN / "dagster-daemon"), "run", "-w", str(tmp_path / "workspace.yaml")]
        # The runs are subprocesses of the code server (DefaultRunLauncher): it carries the settings.
        with server_process(grpc, grpc_port, logs / "grpc.log", timeout=300, env=env, cwd=REPO), \
                server_process(web, web_port, logs / "webserver.log", timeout=300, cwd=tmp_path):
            client = DagsterGraphQLClient("127.0.0.1", port_number=web_port)
            stop_sensors(client)
            with background_process(daemon, logs / "daemon.log", cwd=tmp_path):
                run_id = client.submit_job_execution(JOB, repository_location_name=LOCATION,
                                                     repository_name="__repository__")
                status = wait_for_run(client, run_id)
        instance = dg.DagsterInstance.get()
        assert status == dg.DagsterRunStatus.SUCCESS, failure_report(instance, run_id)
        assert len(instance.get_run_ids()) == 1, "only the launched run ran"
        materialized = materializations(instance, run_id)
        stages = {key.path[-1] for key in materialized}
        print(f"\nstages materialized through the topology: {sorted(stages)}")
        assert EXPECTED_STAGES <= stages, EXPECTED_STAGES - stages
        check_outputs_in_s3(materialized, s3_endpoint)
        tasks = ray_tasks(ray.dashboard_url)
        print(f"Ray tasks by node: { {where: sorted(set(names)) for where, names in tasks.items()} }")
        ran = " ".join(tasks["worker"])
        # cleaning: the recipe's mappers and filters (Ray Data fuses them into the read tasks, e.g.
        # `MapBatches(_read_files)->MapBatches(_segment)->...`), the dedup signatures, and the writes of the parts
        for name in ("MapBatches(_segment)", "MapBatches(_signatures)", "MapBatches(_write)", "DedupShard."):
            assert name in ran, (name, tasks)
        for stage in ("chunks", "vectors"):  # chunking, and the embedding of the chunks (operators/ray_shards.py)
            assert f"ShardWorker.run[{DATASET}/{stage}]" in ran, (stage, tasks)
        assert not tasks["elsewhere"], tasks
        for actor in ("ShardWorker", "DedupShard"):  # the model actors and the union-find shards
            assert set(actor_nodes(ray.dashboard_url, actor)) == {"worker"}, actor
        check_chunks_in_milvus(milvus_uri, materialized[dg.AssetKey([DATASET, "chunks"])]["dagster/row_count"])


SENSORS = """query Sensors($selector: RepositorySelector!) {
  repositoryOrError(repositorySelector: $selector) {
    ... on Repository { sensors { id name sensorState { status } } }
    ... on PythonError { message }
  }
}"""
STOP_SENSOR = """mutation Stop($id: String!) {
  stopSensor(id: $id) {
    ... on StopSensorMutationResult { instigationState { status } }
    ... on PythonError { message }
  }
}"""


def stop_sensors(client: DagsterGraphQLClient) -> None:
    """Turn every sensor off, as a user does in the UI, before the daemon could tick one."""
    selector = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__"}
    sensors = client._execute(SENSORS, {"selector": selector})["repositoryOrError"]["sensors"]
    assert sensors, "the code location has no sensors"
    for sensor in sensors:
        result = client._execute(STOP_SENSOR, {"id": sensor["id"]})["stopSensor"]
        assert result.get("instigationState", {}).get("status") == "STOPPED", (sensor["name"], result)


def materializations(instance: dg.DagsterInstance, run_id: str) -> dict[dg.AssetKey, dict]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    result = {}
    for record in records:
        materialization = record.event_log_entry.asset_materialization
        result[materialization.asset_key] = {k: v.value for k, v in materialization.metadata.items()}
    return result


def ray_tasks(dashboard_url: str) -> dict[str, list[str]]:
    """Finished Ray tasks by where they ran: on the worker node, or anywhere else (the head has no CPUs).

    One query per node (filtered on the node id and the state), each raising if Ray's state API lost or cut
    any of them: a task missing here would make "nothing ran elsewhere" vacuous. The driver itself (the run
    process, attached to the head) is a DRIVER_TASK entry, not work: left out. Actor start-ups and Ray's
    private actors are left out too (below).
    """
    from ray.util.state import list_nodes, list_tasks

    placed: dict[str, list[str]] = {"worker": [], "elsewhere": []}
    for node in list_nodes(address=dashboard_url, limit=TASK_LIMIT):
        for task in list_tasks(address=dashboard_url, limit=TASK_LIMIT, raise_on_missing_output=True,
                               filters=[("node_id", "=", node.node_id), ("state", "=", "FINISHED")]):
            # Actor start-ups are not work (where the actors live is checked by `actor_nodes`), and Ray Data's
            # own coordinators (`_AutoscalingCoordinatorActor`, `_StatsActor`…) need no CPU and may live on the
            # head: they schedule and count, they do no data work.
            if task.type in ("DRIVER_TASK", "ACTOR_CREATION_TASK") or (task.type == "ACTOR_TASK"
                                                                        and task.name.startswith("_")):
                continue
            placed["elsewhere" if node.is_head_node else "worker"].append(f"{task.type}:{task.name}")
    return placed


def actor_nodes(dashboard_url: str, class_name: str) -> list[str]:
    """For every actor of `class_name` the run created: "worker" or "elsewhere", by the node it lived on."""
    from ray.util.state import list_actors, list_nodes

    worker_nodes = {node.node_id for node in list_nodes(address=dashboard_url) if not node.is_head_node}
    actors = list_actors(address=dashboard_url, filters=[("class_name", "=", class_name)], limit=TASK_LIMIT,
                         raise_on_missing_output=True)
    assert actors, f"no {class_name} actor ran"
    return ["worker" if actor.node_id in worker_nodes else "elsewhere" for actor in actors]


def check_outputs_in_s3(materialized: dict[dg.AssetKey, dict], s3_endpoint: str) -> None:
    """Every table output is a Delta table in the bucket whose recorded version holds the rows Dagster recorded."""
    store = ObjectStore(url="s3://unused", endpoint_url=s3_endpoint, aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"])
    outputs = {key: meta for key, meta in materialized.items() if "dagster/uri" in meta}
    assert outputs, f"no table output recorded: {materialized}"
    for key, meta in outputs.items():
        assert meta["dagster/uri"].startswith("s3://"), (key, meta["dagster/uri"])
        ref = tables.TableRef(meta["dagster/uri"], meta[VERSION_KEY], tables.delta_options(store))
        rows = ref.read(columns=[]).num_rows  # the data files, not only the log's statistics
        assert rows == meta["dagster/row_count"], (key, rows, meta["dagster/row_count"])


def check_chunks_in_milvus(milvus_uri: str, chunks: int) -> None:
    client = MilvusClient(uri=milvus_uri)
    try:
        rows = client.query(collection_name(DATASET), filter="", output_fields=["count(*)"])[0]["count(*)"]
    finally:
        client.close()
    assert rows == chunks
