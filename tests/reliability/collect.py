"""Materialize one dataset's collection stage, in this process or as a child whose peak memory we read.

`python -m tests.reliability.collect SPEC STORAGE_DIR` prints one JSON line: success, row counts, the
`collected` metadata and the child's own peak RSS (so memory is measured without timing anything).
"""

import json
import os
import resource
import sys
from pathlib import Path

import dagster as dg
import pyarrow as pa

from datamate_assets import collection
from datamate_assets.keys import key
from datamate_assets.spec import load_spec
from datamate_resources import build_resources, tables
from datamate_resources.settings import Settings


def collect(spec_path: Path, storage_dir: Path) -> tuple[dg.ExecuteInProcessResult, pa.Table | None, pa.Table | None]:
    spec = load_spec(spec_path)
    settings = Settings.from_env({
        "DATAMATE_HOME": str(storage_dir.parent), "DATAMATE_STORAGE_URL": f"file://{storage_dir}",
        "DATAMATE_DATASETS_DIR": str(spec_path.parent),
    })
    resources = build_resources(settings)
    result = dg.materialize(
        collection.build_defs(spec).assets, resources=resources, instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    storage = resources["storage"]
    collected = tables.read_stage(storage, spec.name, "collected")
    rejects = tables.read_stage(storage, spec.name, "collection_rejects")
    return result, collected, rejects


def collected_metadata(result: dg.ExecuteInProcessResult, spec_name: str) -> dict[str, object]:
    for event in result.get_asset_materialization_events():
        if event.asset_key == key(spec_name, "collected"):
            return {name: value.value for name, value in event.materialization.metadata.items()}
    return {}


def main(spec_path: str, storage_dir: str) -> None:
    result, collected, rejects = collect(Path(spec_path), Path(storage_dir))
    spec_name = load_spec(Path(spec_path)).name
    metadata = collected_metadata(result, spec_name)
    print(json.dumps({
        "success": result.success,
        "collected": collected.num_rows if collected is not None else None,
        "rejected": rejects.num_rows if rejects is not None else None,
        "reasons": sorted(set(rejects.column("reason").to_pylist())) if rejects is not None else [],
        "inputs": metadata.get("inputs"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }), flush=True)
    # Skip interpreter teardown: a native thread of an imported library (gRPC) sometimes aborts there
    # ("terminate called without an active exception"), which says nothing about what this measures.
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:3])
