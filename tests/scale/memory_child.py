"""Run collection -> cleaning -> chunks on a folder of JSONL documents in this process; print the peak RSS.

    python -m tests.scale.memory_child CORPUS_DIR WORK_DIR
"""

import json
import resource
import sys
from pathlib import Path

import dagster as dg

from datamate_assets import cleaning, collection, indexing
from datamate_assets.spec import DatasetSpec
from datamate_resources.io_manager import DeltaIOManager
from datamate_resources.storage import ObjectStore

PROCESS = [
    {"whitespace_normalization_mapper": {}},
    {"text_length_filter": {"min_len": 100}},
    {"document_deduplicator": {"lowercase": True}},
    {"document_minhash_deduplicator": {"jaccard_threshold": 0.7}},
]


def main(corpus: Path, work: Path) -> None:
    spec = DatasetSpec.model_validate({
        "name": "scale", "sources": [{"type": "folder", "path": str(corpus), "include": ["*.jsonl"], "id_field": "id"}],
        "cleaning": {"process": PROCESS}, "index": {"chunk_size": 800, "chunk_overlap": 100},
    })
    storage = ObjectStore(url=f"file://{work / 'storage'}")
    assets = [*collection.build_defs(spec).assets, *cleaning.build_defs(spec).assets,
              *[a for a in indexing.build_defs(spec).assets if dg.AssetKey(["scale", "chunks"]) in a.keys]]
    result = dg.materialize(assets, resources={"storage": storage, "io_manager": DeltaIOManager(storage=storage)},
                            instance=dg.DagsterInstance.ephemeral(), raise_on_error=True)
    rows = {event.asset_key.to_user_string(): event.materialization.metadata["dagster/row_count"].value
            for event in result.get_asset_materialization_events()}
    print(json.dumps({"peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "rows": rows}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
