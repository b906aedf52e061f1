"""`<dataset>/annotated` and the Label Studio round trip, materialized with real resources: tasks go out with
pre-annotations, a completed export comes back through the inbox, human labels replace automatic ones."""

import json

import dagster as dg
import pyarrow as pa
import pytest
from label_studio_sdk.label_interface import LabelInterface

from datamate_assets import annotation
from datamate_assets.spec import DatasetSpec
from datamate_resources import tables
from datamate_resources.embeddings import EmbeddingsResource
from datamate_resources.io_manager import DeltaIOManager
from datamate_resources.storage import ObjectStore
from tests.llm.conftest import openai_resource

TOPICS = ["sports", "science", "politics"]
DOCS = {
    "a" * 64: "The striker scored twice and the football club won the league title after a dramatic final match "
              "in front of sixty thousand fans. The coach praised the players for their fitness and team spirit.",
    "b" * 64: "Die Forscher haben im Labor eine neue Methode entwickelt, um Proteine mit Hilfe von Röntgenstrahlen "
              "sichtbar zu machen. Die Ergebnisse der Studie wurden in einer Fachzeitschrift veröffentlicht.",
    "c" * 64: "Parliament passed the budget after a long debate; the opposition party voted against the government "
              "and the prime minister announced new elections for the spring.",
}


def cleaned_asset(spec: DatasetSpec):
    @dg.asset(key=[spec.name, "cleaned"], group_name=spec.name)
    def cleaned() -> pa.Table:
        return pa.table({"doc_id": list(DOCS), "text": list(DOCS.values())})

    return cleaned


def make_spec(labeler: str) -> DatasetSpec:
    return DatasetSpec.model_validate({
        "name": "docs", "sources": [{"type": "folder", "path": "unused"}],
        "annotation": {"labels": TOPICS, "labeler": labeler, "label_studio": {"inbox": "label_studio/inbox"}},
    })


def materialize(spec: DatasetSpec, store: ObjectStore, llm, selection: list[str] | None = None):
    defs = annotation.build_defs(spec)
    result = dg.materialize(
        [cleaned_asset(spec), *defs.assets],
        selection=selection,
        resources={"storage": store, "io_manager": DeltaIOManager(storage=store), "llm": llm,
                   "embeddings": EmbeddingsResource()},
    )
    assert result.success
    return result


def annotated_rows(store: ObjectStore) -> dict[str, dict]:
    return {r["doc_id"]: r for r in tables.read_stage(store, "docs", "annotated").to_pylist()}


@pytest.fixture
def store(tmp_path) -> ObjectStore:
    return ObjectStore(url=f"file://{tmp_path / 'storage'}")


def test_label_studio_round_trip_with_embedding_topics(store):
    spec = make_spec("embeddings")
    # The LLM is never asked in this configuration; a resource pointing nowhere proves it.
    unused_llm = openai_resource("http://127.0.0.1:9/v1")
    first = materialize(spec, store, unused_llm)

    rows = annotated_rows(store)
    assert set(rows) == set(DOCS)
    assert {d: r["language"] for d, r in rows.items()} == {"a" * 64: "en", "b" * 64: "de", "c" * 64: "en"}
    assert {d: r["topic"] for d, r in rows.items()} == {"a" * 64: "sports", "b" * 64: "science",
                                                         "c" * 64: "politics"}
    for row in rows.values():
        labels = json.loads(row["labels"])
        assert labels["topic"]["source"].startswith("embeddings:") and 0 < labels["topic"]["confidence"] <= 1
        assert labels["language"]["source"] == "lingua" and 0 <= row["quality_score"] <= 1
        assert not row["human_labeled"]
    annotated_meta = first.asset_materializations_for_node("docs__annotated")[0].metadata
    assert annotated_meta["documents"].value == 3 and "sports" in annotated_meta["topic_distribution"].value

    # Tasks (JSONL files, each named with its URI in the metadata) and config are valid Label Studio imports.
    tasks_meta = first.asset_materializations_for_node("docs__label_studio_tasks")[0].metadata
    assert tasks_meta["task_uris"].value == [store.uri("label_studio", "docs", "tasks-00000.jsonl")]
    assert tasks_meta["config_uri"].value == store.uri("label_studio", "docs", "config.xml")
    config = store.read_bytes("label_studio", "docs", "config.xml").decode()
    lines = store.read_bytes("label_studio", "docs", "tasks-00000.jsonl").decode().splitlines()
    tasks = [json.loads(line) for line in lines]
    interface = LabelInterface(config)
    assert len(tasks) == 3 and tasks_meta["tasks"].value == 3
    assert {t["data"]["text"] for t in tasks} == set(DOCS.values())  # each document's text joined to its labels
    for task in tasks:
        assert interface.validate_task({"data": task["data"]})
        assert interface.validate_prediction(task["predictions"][0], return_errors=True) == []

    # A human corrects one topic in Label Studio (accepting the pre-annotation otherwise) and exports.
    corrected = tasks[0]
    result = json.loads(json.dumps(corrected["predictions"][0]["result"]))
    for region in result:
        if region["from_name"] == "topic":
            region["value"]["choices"] = ["politics"]
    export = [{**corrected, "id": 1, "annotations": [{
        "id": 11, "result": result, "was_cancelled": False, "completed_by": {"id": 5, "email": "ann@example.org"},
        "created_at": "2026-03-01T09:00:00.000000Z", "updated_at": "2026-03-01T09:05:00.000000Z"}]},
        {**tasks[1], "id": 2, "annotations": []}]
    store.write_bytes(json.dumps(export).encode(), "label_studio", "inbox", "export-1.json")
    store.write_bytes(b"not json", "label_studio", "inbox", "broken.json")

    second = materialize(spec, store, unused_llm)
    rows_after = annotated_rows(store)
    doc = corrected["data"]["doc_id"]
    assert rows_after[doc]["topic"] == "politics" and rows_after[doc]["topic_source"] == "human:label-studio"
    human_topic = json.loads(rows_after[doc]["labels"])["topic"]
    assert (human_topic["annotator"], human_topic["annotated_at"]) == ("ann@example.org",
                                                                       "2026-03-01T09:05:00.000000Z")
    assert [d for d, r in rows_after.items() if r["human_labeled"]] == [doc]
    for other in set(DOCS) - {doc}:
        assert rows_after[other]["topic"] == rows[other]["topic"]

    human_meta = second.asset_materializations_for_node("docs__human_labels")[0].metadata
    assert human_meta["export_files"].value == 2 and human_meta["unreadable_files"].value == 1
    assert human_meta["tasks"].value == 2
    assert human_meta["tasks_labeled"].value + human_meta["tasks_set_aside"].value == 2


def test_llm_topics_use_the_cache_on_the_second_run(llm_server, store):
    spec = make_spec("llm")
    llm = openai_resource(llm_server, max_tokens=48)
    selection = ["docs/cleaned", "docs/human_labels", "docs/annotated"]
    first = materialize(spec, store, llm, selection)
    meta = first.asset_materializations_for_node("docs__annotated")[0].metadata
    assert meta["llm_calls"].value >= 3 and meta["llm_cache_hits"].value == 0
    rows = annotated_rows(store)
    for row in rows.values():
        assert row["topic"] in TOPICS and row["topic_source"] == "llm:SmolLM2-135M-Instruct.Q4_1"

    second = materialize(spec, store, llm, selection)
    meta = second.asset_materializations_for_node("docs__annotated")[0].metadata
    assert meta["llm_calls"].value == 0 and meta["llm_cache_hits"].value == 3
    assert annotated_rows(store) == rows
