"""Cleaning on a loopback Ray cluster (head + worker nodes as separate processes, tests/deploy/topology.py) under
faults: a worker node killed in the middle of a dedup step, and a cluster that is gone before the run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from bench.corpus import generate
from datamate_resources import tables
from datamate_resources.storage import ObjectStore
from operators.ray_exec import Destination, Outputs, Source, parts_dataset, run_ray_tables
from operators.recipe import Recipe
from tests.deploy.topology import RAY_ENV, ray_cluster

REPO = Path(__file__).resolve().parents[2]
PROCESS = [
    {"clean_html_mapper": {}},
    {"text_length_filter": {"min_len": 100}},
    {"document_minhash_deduplicator": {"jaccard_threshold": 0.7}},
    {"document_deduplicator": {}},
]


def _outputs(folder: Path, schema: pa.Schema) -> Outputs:
    drops = schema.append(pa.field("operator", pa.string())).append(pa.field("reason", pa.string()))
    return Outputs(Destination(str(folder / "kept"), schema), Destination(str(folder / "drops"), drops))


@pytest.mark.e2e
@pytest.mark.timeout(1800)
def test_a_worker_node_killed_mid_dedup_is_retried_and_the_output_equals_a_clean_run(tmp_path):
    import ray

    storage = ObjectStore(url=f"file://{tmp_path / 'store'}")
    corpus = generate(600, seed=11).table
    ref = tables.write(storage, "d", "collected", corpus.append_column("n", pa.array(range(corpus.num_rows))))
    source, recipe = Source.of(ref.uri, ref.version), Recipe.from_process(PROCESS)
    messages, killed = [], []
    with ray_cluster(workers=2, cpus_per_worker=1, logs=tmp_path) as cluster:
        ray.init(address=cluster.address, runtime_env={"env_vars": RAY_ENV}, log_to_driver=False)
        try:
            clean = run_ray_tables(recipe, source, _outputs(tmp_path / "clean", source.schema))

            def kill_a_worker_node(message: str) -> None:
                messages.append(message)
                if "verified candidate pairs" in message and not killed:  # shards hold the step's state now
                    os.killpg(cluster.workers[1].pid, signal.SIGKILL)
                    killed.append(message)
                    # the step goes on to apply its decisions only once Ray knows the node is gone: otherwise
                    # the shards there may still answer before they die, and nothing is retried
                    deadline = time.monotonic() + 120
                    while len([n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")]) > 1:
                        assert time.monotonic() < deadline, "Ray did not see the killed node die"
                        time.sleep(0.5)

            faulted = run_ray_tables(recipe, source, _outputs(tmp_path / "killed", source.schema),
                                     log=kill_a_worker_node)
        finally:
            ray.shutdown()
    assert killed, "the node was killed during the dedup step"
    assert any("running the step again" in m for m in messages), messages
    for name in ("kept", "drops"):
        expected = parts_dataset(getattr(clean, name), {}).to_table().sort_by("n")
        assert parts_dataset(getattr(faulted, name), {}).to_table().sort_by("n").equals(expected)
    assert faulted.kept_rows + faulted.dropped_rows == corpus.num_rows  # nothing lost, nothing twice
    assert [(s.docs_in, s.dropped) for s in faulted.stats] == [(s.docs_in, s.dropped) for s in clean.stats]


CHILD = """
import json, sys
import dagster as dg
from datamate_assets import cleaning
from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec
from datamate_resources.io_manager import DeltaIOManager
from datamate_resources.ray import DatamateRay
from datamate_resources.storage import ObjectStore

storage_url, address, process = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
spec = DatasetSpec.model_validate({"name": "docs", "sources": [{"type": "folder", "path": "unused"}],
                                   "cleaning": {"executor": "ray", "process": process}})
storage = ObjectStore(url=storage_url)
defs = cleaning.build_defs(spec)
result = dg.materialize([*defs.assets, dg.SourceAsset(key(spec, "collected"))], raise_on_error=False,
                        resources={"storage": storage, "io_manager": DeltaIOManager(storage=storage),
                                   "ray": DatamateRay(address=address)})
errors = [e.event_specific_data.error.to_string() for e in result.all_events
          if getattr(e.event_specific_data, "error", None) is not None]  # step or resource-init failures
print(json.dumps({"success": result.success, "errors": errors}))
"""


def _materialize_in_child(storage_url: str, address: str) -> dict:
    """In its own process: a driver whose cluster vanishes may be ended by Ray itself."""
    env = {**os.environ, **RAY_ENV}
    done = subprocess.run([sys.executable, "-c", CHILD, storage_url, address, json.dumps(PROCESS)], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=900)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.e2e
@pytest.mark.timeout(1800)
def test_a_vanished_cluster_fails_the_run_naming_its_address_and_the_tables_keep_their_version(tmp_path):
    storage = ObjectStore(url=f"file://{tmp_path / 'store'}")
    corpus = generate(300, seed=11).table
    tables.write(storage, "docs", "collected", corpus.slice(0, 200))
    with ray_cluster(workers=1, cpus_per_worker=1, logs=tmp_path) as cluster:
        address = cluster.address
        assert _materialize_in_child(storage.url, address)["success"]
    versions = {stage: tables.current(storage, "docs", stage).version for stage in ("cleaned", "cleaning_drops")}
    tables.write(storage, "docs", "collected", corpus)  # 100 new documents to clean, on a cluster that is gone
    failed = _materialize_in_child(storage.url, address)
    assert not failed["success"]
    assert any(address in error for error in failed["errors"]), failed
    assert {stage: tables.current(storage, "docs", stage).version for stage in versions} == versions
