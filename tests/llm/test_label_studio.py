"""The Label Studio formats, checked against the real `label-studio-sdk`: its LabelInterface validates our
config, tasks and predictions and generates a completed task as Label Studio would export it; its export
converter reads the same export we read."""

import json
import random

import pytest
from label_studio_sdk.converter.converter import Converter
from label_studio_sdk.label_interface import LabelInterface

from operators.annotation import label_studio as ls

TOPICS = ["sports", "science & tech", "politics"]


@pytest.fixture
def interface() -> LabelInterface:
    return LabelInterface(ls.labeling_config(TOPICS, ["en", "de", "unknown"]))


def test_config_declares_the_three_controls(interface):
    assert {c.name for c in interface.controls} == {"topic", "language", "quality"}
    assert interface.get_control("topic").labels == TOPICS  # the "&" survived XML escaping


def test_tasks_with_predictions_are_valid_label_studio_imports(interface):
    labels = {"topic": {"value": "science & tech", "confidence": 0.62, "source": "llm:x"},
              "language": {"value": "de", "confidence": 0.97, "source": "lingua"},
              "quality": {"value": 0.67, "confidence": 1.0, "source": "rules"}}
    task = ls.task("d" * 64, "Ein Text über Forschung.", labels, model_version="datamate:test")
    assert interface.validate_task({"data": task["data"]})
    (prediction,) = task["predictions"]
    assert interface.validate_prediction(prediction, return_errors=True) == []
    by_control = {r["from_name"]: r["value"] for r in prediction["result"]}
    assert by_control == {"topic": {"choices": ["science & tech"]}, "language": {"choices": ["de"]},
                          "quality": {"rating": 4}}
    # An unknown choice is what Label Studio rejects, so the check above is not vacuous.
    prediction["result"][0]["value"]["choices"] = ["cooking"]
    assert interface.validate_prediction(prediction, return_errors=True) != []


def test_a_document_without_labels_gets_no_prediction():
    assert ls.task("e" * 64, "text", {}, model_version="m")["predictions"] == []


def completed_task(interface: LabelInterface, doc_id: str, task_id: int, annotator: dict | int, when: str) -> dict:
    """A completed task as Label Studio exports it: the SDK's generator fills the annotation's regions."""
    random.seed(task_id)  # the SDK draws sample values at random: keep runs reproducible
    task = interface.generate_complete_sample_task(raise_on_failure=True)
    task.pop("predictions", None)
    task["id"] = task_id
    task["data"]["doc_id"] = doc_id
    annotation = task["annotations"][0]
    annotation.update(id=task_id * 10, completed_by=annotator, created_at=when, updated_at=when)
    return task


def sdk_values(annotation: dict) -> dict:
    values = {r["from_name"]: r["value"] for r in annotation["result"]}
    expected = {"topic": values["topic"]["choices"][0], "language": values["language"]["choices"][0]}
    rating = values["quality"]["rating"]
    return expected if rating == 0 else {**expected, "quality": ls.rating_to_score(rating)}  # 0 = no stars


def test_read_export_matches_what_label_studio_annotated(interface, tmp_path):
    export = [completed_task(interface, "a" * 64, 1, {"id": 7, "email": "ann@example.org"}, "2026-01-02T10:00:00Z"),
              completed_task(interface, "b" * 64, 2, 3, "2026-01-03T11:00:00Z")]
    result = ls.read_export(json.dumps(export), "export.json", TOPICS)

    assert result.tasks == 2 and result.set_aside == []
    got = {(r["doc_id"], r["field"]): json.loads(r["value"]) for r in result.labels}
    for task in export:
        expected = sdk_values(task["annotations"][0])
        assert {f: got[(task["data"]["doc_id"], f)] for f in expected} == expected
    who = {r["doc_id"][0]: (r["annotator"], r["annotated_at"]) for r in result.labels}
    assert who == {"a": ("ann@example.org", "2026-01-02T10:00:00Z"),
                   "b": ("label-studio-user:3", "2026-01-03T11:00:00Z")}

    # Label Studio's own converter reads the same export to the same values.
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    Converter(ls.labeling_config(TOPICS, ["en", "de", "unknown"]), str(tmp_path), download_resources=False
              ).convert_to_json_min(str(path), str(tmp_path / "out"), is_dir=False)
    for record in json.loads((tmp_path / "out" / "result.json").read_text()):
        assert got[(record["doc_id"], "topic")] == record["topic"]
        assert got[(record["doc_id"], "language")] == record["language"]
        rating = record["quality"][0]["rating"]
        assert got.get((record["doc_id"], "quality")) == (ls.rating_to_score(rating) if rating else None)


def test_bad_tasks_are_set_aside_with_a_reason_and_the_rest_goes_on(interface):
    good = completed_task(interface, "c" * 64, 1, 1, "2026-01-01T00:00:00Z")
    no_doc = completed_task(interface, "x", 2, 1, "2026-01-01T00:00:00Z")
    del no_doc["data"]["doc_id"]
    cancelled = completed_task(interface, "d" * 64, 3, 1, "2026-01-01T00:00:00Z")
    cancelled["annotations"][0]["was_cancelled"] = True
    unknown = completed_task(interface, "e" * 64, 4, 1, "2026-01-01T00:00:00Z")
    for region in unknown["annotations"][0]["result"]:
        if region["from_name"] == "topic":
            region["value"]["choices"] = ["cooking"]
    result = ls.read_export(json.dumps([good, no_doc, cancelled, unknown, "not a task"]), "mixed.json", TOPICS)

    reasons = [r["reason"].split(":")[0] for r in result.set_aside]
    assert reasons == ["missing_doc_id", "not_annotated", "unknown_label", "not_a_task"]
    assert {r["doc_id"] for r in result.labels} == {"c" * 64}
    assert result.tasks == len(reasons) + 1  # every task is either read or set aside
    assert all(r["export_file"] == "mixed.json" for r in result.set_aside)


def test_a_file_that_is_not_an_export_names_the_file():
    with pytest.raises(ValueError, match="broken.json: not JSON"):
        ls.read_export(b'[{"data": ', "broken.json")
    with pytest.raises(ValueError, match="min.json: a Label Studio JSON export is a list"):
        ls.read_export(b'{"tasks": []}', "min.json")


def test_the_latest_completed_annotation_wins(interface):
    task = completed_task(interface, "f" * 64, 1, 1, "2026-01-01T00:00:00Z")
    later = json.loads(json.dumps(task["annotations"][0]))
    later.update(id=99, completed_by={"id": 2, "email": "reviewer@example.org"}, updated_at="2026-02-01T00:00:00Z")
    task["annotations"].append(later)
    result = ls.read_export(json.dumps([task]), "e.json", TOPICS)
    assert {r["annotator"] for r in result.labels} == {"reviewer@example.org"}
