"""The stage in Dagster on Milvus Lite: chunks -> indexed -> retrieval_eval, then `datamate search`."""

import json

import dagster as dg
import pyarrow as pa

from datamate_assets.cli import main
from datamate_assets.indexing import build_defs
from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec
from datamate_resources import tables
from datamate_resources.io_manager import DeltaIOManager
from datamate_resources.storage import ObjectStore
from tests.indexing.conftest import DOCS

SPEC = DatasetSpec.model_validate({
    "name": "kb_demo",
    "sources": [{"type": "folder", "path": "unused"}],
    "synthesis": {},
    "index": {"splitter": "recursive", "chunk_size": 200, "chunk_overlap": 0,
              "checks": {"k": 3, "min_recall_at_k": 0.5}},
})
QUESTIONS = {"ssh": "Which port does the OpenSSH server listen on?", "apt": "Where are Debian mirrors listed?",
             "boot": "Where do kernel parameters go?", "net": "How do I set a static address?"}


def upstream(chunk_table: pa.Table | None):
    @dg.asset(key=key(SPEC, "cleaned"), group_name=SPEC.name)
    def cleaned() -> pa.Table:
        return pa.Table.from_pylist([
            {"doc_id": d, "text": t, "source_uri": f"file:///{d}.txt", "recipe_hash": "r1"} for d, t in DOCS.items()
        ])

    @dg.asset(key=key(SPEC, "synthesized"), group_name=SPEC.name)
    def synthesized() -> pa.Table:
        # Questions about each document's first chunk, plus one without a chunk_id (set aside).
        firsts = {r["doc_id"]: r["chunk_id"] for r in chunk_table.to_pylist() if r["position"] == 0}
        rows = [{"record_id": f"q{i}", "question": q, "chunk_id": firsts[d], "doc_id": d}
                for i, (d, q) in enumerate(QUESTIONS.items())]
        orphan = {"record_id": "x", "question": "orphan", "chunk_id": None, "doc_id": "apt"}
        return pa.Table.from_pylist([*rows, orphan])

    return [cleaned, synthesized]


def test_stage_materializes_idempotently_and_is_searchable(tmp_path, lite, embeddings, monkeypatch, capsys):
    defs = build_defs(SPEC)
    stage_assets = list(defs.assets)
    storage = ObjectStore(url=f"file://{tmp_path / 'storage'}")
    resources = {"io_manager": DeltaIOManager(storage=storage), "storage": storage, "milvus": lite,
                 "embeddings": embeddings}
    first = dg.materialize([*upstream(None)[:1], *stage_assets[:1]], resources=resources,
                           selection=[key(SPEC, "cleaned"), key(SPEC, "chunks")])
    chunk_table = tables.read_stage(storage, SPEC.name, "chunks")
    chunk_meta = first.asset_materializations_for_node("kb_demo__chunks")[0].metadata
    assert chunk_meta["chunks"].value == chunk_meta["dagster/row_count"].value == chunk_table.num_rows
    assert chunk_meta["documents"].value == len(DOCS) and chunk_meta["documents_without_chunks"].value == 0
    assert "| min | p50 | p90 | p99 | max |" in chunk_meta["chunk_characters"].value
    result = dg.materialize([*upstream(chunk_table), *stage_assets], resources=resources)
    assert result.success

    indexed = result.asset_materializations_for_node("kb_demo__indexed")[0].metadata
    assert indexed["vectors"].value == indexed["chunks"].value == chunk_table.num_rows
    assert indexed["search"].value.startswith("hybrid")
    assert (indexed["embedding_model"].value, indexed["dimension"].value) == ("all-MiniLM-L6-v2-onnx-qint8", 384)
    evaluation = result.asset_materializations_for_node("kb_demo__retrieval_eval")[0].metadata
    assert evaluation["questions"].value == 4 and evaluation["set_aside_no_chunk_id"].value == 1
    assert evaluation["recall_at_3"].value >= 0.75
    check = result.get_asset_check_evaluations()[0]
    assert check.passed and check.check_name == "recall_at_3"

    again = dg.materialize([*upstream(chunk_table), *stage_assets], resources=resources,
                           selection=[key(SPEC, "chunks"), key(SPEC, "indexed")])
    metadata = again.asset_materializations_for_node("kb_demo__indexed")[0].metadata
    assert metadata["summary"].value == "unchanged: nothing embedded, nothing deleted"
    assert metadata["embedded"].value == 0 and metadata["vectors"].value == chunk_table.num_rows

    # The CLI reads the same Milvus Lite directory (released by the runs above).
    monkeypatch.setenv("DATAMATE_MILVUS_URI", lite.path)
    queries = tmp_path / "queries.jsonl"
    queries.write_text("\n".join(json.dumps({"q": q}) for q in QUESTIONS.values()) + "\n")
    assert main(["search", "--dataset", "kb_demo", "--queries", str(queries), "--k", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["q"] for line in lines] == list(QUESTIONS.values())
    assert [line["hits"][0]["doc_id"] for line in lines] == list(QUESTIONS)
    assert set(lines[0]["hits"][0]) == {"chunk_id", "doc_id", "text", "source_uri", "score"}

    assert main(["search", "Which port for ssh?", "--dataset", "kb_demo"]) == 0
    assert "file:///ssh.txt" in capsys.readouterr().out
    queries.write_text('{"query": "wrong field"}\n')
    assert main(["search", "--dataset", "kb_demo", "--queries", str(queries)]) == 1
    assert f"{queries}:1: expected a JSON object with a `q` field" in capsys.readouterr().err
    assert main(["search", "anything", "--dataset", "missing"]) == 1
    assert "materialize its `indexed` asset" in capsys.readouterr().err
