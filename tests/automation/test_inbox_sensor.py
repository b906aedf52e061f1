"""The inbox sensor begins from the state a run left (`make dev` after `make demo` starts nothing on unchanged
data), and still collects what changed since."""

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from datamate_assets.automation import INBOX_FILES_TAG, inbox_sensor
from datamate_assets.spec import DatasetSpec
from datamate_resources.storage import ObjectStore

COLLECTED = dg.AssetKey(["inboxed", "collected"])
TARGET = [COLLECTED, dg.AssetKey(["inboxed", "collection_rejects"])]


@pytest.fixture
def inbox(tmp_path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    for name in ("apt.md", "dpkg.md", "network.txt"):
        (folder / name).write_text(f"Notes about {name}.")
    return folder


@pytest.fixture
def sensor(inbox) -> dg.SensorDefinition:
    spec = DatasetSpec.model_validate({"name": "inboxed", "sources": [{"type": "folder", "path": str(inbox)}],
                                       "automation": {"inbox_sensor": True}})
    return inbox_sensor(spec, TARGET)


def tick(sensor, instance, tmp_path, cursor: str | None = None) -> dg.SensorResult:
    storage = ObjectStore(url=(tmp_path / "storage").as_uri())
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"storage": storage})
    return sensor(context)


def collected_files(result: dg.SensorResult) -> list[str]:
    return [name for request in result.run_requests for name in json.loads(request.tags[INBOX_FILES_TAG])]


def test_first_tick_after_a_materialization_starts_no_run_on_unchanged_files(sensor, instance, inbox, tmp_path):
    instance.report_runless_asset_event(dg.AssetMaterialization(COLLECTED))  # what the demo's run leaves

    first = tick(sensor, instance, tmp_path)
    assert first.run_requests == []
    assert "No new or changed files in 3 watched" in first.skip_reason.skip_message
    assert "began from the materialization of inboxed/collected" in first.skip_reason.skip_message

    time.sleep(0.01)  # a later mtime than the materialization's timestamp
    (inbox / "new.md").write_text("A file dropped while the UI runs.")
    second = tick(sensor, instance, tmp_path, cursor=first.cursor)
    assert collected_files(second) == [(inbox / "new.md").resolve().as_uri()]

    third = tick(sensor, instance, tmp_path, cursor=second.cursor)
    assert third.run_requests == [] and third.skip_reason is not None


def test_files_changed_after_the_materialization_are_collected_on_the_first_tick(sensor, instance, inbox, tmp_path):
    instance.report_runless_asset_event(dg.AssetMaterialization(COLLECTED))
    materialized = instance.get_latest_materialization_event(COLLECTED).timestamp
    later = materialized + 5
    os.utime(inbox / "dpkg.md", (later, later))  # edited after the demo, before `make dev`

    first = tick(sensor, instance, tmp_path)
    assert collected_files(first) == [(inbox / "dpkg.md").resolve().as_uri()]


def test_without_any_materialization_every_file_is_new(sensor, instance, inbox, tmp_path):
    first = tick(sensor, instance, tmp_path)
    assert sorted(collected_files(first)) == sorted(p.resolve().as_uri() for p in inbox.iterdir())


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance
