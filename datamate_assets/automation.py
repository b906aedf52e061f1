"""Automation: what makes data flow without anyone clicking.

- Schedules re-collect a dataset's sources on the spec's cron (`automation.schedule`, `automation.timezone`).
- Inbox sensors watch a dataset's folder and S3/MinIO sources (or `automation.inbox`): every new or changed
  file starts exactly one collection run, which carries the files in the `datamate/inbox_files` tag.
- A Label Studio sensor launches the annotation import when completed exports land in the annotation inbox.
- Declarative automation: downstream stages run `eager()` after their inputs update; the LLM stages run
  `on_cron(synthesis.schedule)` instead when the spec sets one.
- A run-failure sensor logs (and optionally POSTs) which dataset and stage failed and why.
- Concurrency: runs touching Milvus carry the `datamate/milvus` tag, runs calling the LLM `datamate/llm`;
  the instance's `tag_concurrency_limits` bound them.

`dataset_automation(spec, stages)` adds one dataset's part to the stages `DatasetComponent` builds;
`project_automation()` holds the sensors that serve every dataset.
"""

import hashlib
import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import requests

from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec, FolderSource, S3Source
from datamate_resources.storage import ObjectStore
from operators.readers.sources import GlobFilter, SourceFile, walk_folder

DATASET_TAG = "datamate/dataset"
TRIGGER_TAG = "datamate/trigger"
INBOX_FILES_TAG = "datamate/inbox_files"
MILVUS_TAG = "datamate/milvus"
LLM_TAG = "datamate/llm"
CONCURRENCY_TAG = "datamate/concurrency"  # asset tag: "milvus" or "llm", the automation sensor that runs it
FAILURE_WEBHOOK_ENV = "DATAMATE_FAILURE_WEBHOOK_URL"

COLLECTION_STAGES = ("collected", "collection_rejects")
MILVUS_STAGES = ("indexed", "retrieval_eval")
LLM_STAGES = ("synthesized", "evaluation")
# The import of completed Label Studio annotations (annotation.py's `human_labels`), launched by the Label Studio
# sensor when an export lands; it also runs once when missing, so `annotated` (which depends on it) is not blocked.
LABEL_STUDIO_IMPORT_STAGE = "human_labels"
SENSOR_DRIVEN_STAGES = (*COLLECTION_STAGES, LABEL_STUDIO_IMPORT_STAGE)

INBOX_INTERVAL_SECONDS = 15
AUTOMATION_INTERVAL_SECONDS = 15


# --- inboxes ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Inbox:
    """A watched location: `file:///abs/dir` or `s3://bucket/prefix`, with glob patterns relative to it."""

    url: str
    include: tuple[str, ...] = ("**/*",)
    exclude: tuple[str, ...] = field(default=())

    def list(self, s3_client=None) -> dict[str, str]:
        """Every matching file's URI → a fingerprint that changes when the file changes."""
        matches = GlobFilter(self.include, self.exclude)
        if self.url.startswith("s3://"):
            bucket, _, prefix = self.url.removeprefix("s3://").partition("/")
            prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
            from dagster_aws.s3.sensor import get_objects  # ~50 MB of imports every Dagster process would carry

            return {
                f"s3://{bucket}/{obj['Key']}": obj["ETag"].strip('"')
                for obj in get_objects(bucket, prefix, client=s3_client)
                if not obj["Key"].endswith("/") and matches(obj["Key"][len(prefix):])
            }
        root = Path(self.url.removeprefix("file://"))
        if not root.is_dir():
            return {}
        # Size and mtime change with every write; links and special files are skipped as collection skips them.
        return {
            item.uri: f"{item.metadata['bytes']}:{item.metadata['modified']}"
            for item in walk_folder(root, self.include, self.exclude)
            if isinstance(item, SourceFile) and not Path(item.name).name.startswith(".")
        }


def source_inboxes(spec: DatasetSpec) -> list[Inbox]:
    """`automation.inbox` when set, else the dataset's folder and S3 sources (what collection reads)."""
    if spec.automation and spec.automation.inbox:
        inbox = spec.automation.inbox
        return [Inbox(inbox if inbox.startswith("s3://") else Path(inbox).resolve().as_uri())]
    # Folder sources are relative to the folder holding datasets/, as in collection.
    base = spec.spec_path.resolve().parent.parent if spec.spec_path else Path.cwd()
    inboxes = []
    for source in spec.sources:
        if isinstance(source, FolderSource):
            inboxes.append(Inbox((base / source.path).resolve().as_uri(), tuple(source.include), tuple(source.exclude)))
        elif isinstance(source, S3Source):
            inboxes.append(Inbox(source.url, tuple(source.include), tuple(source.exclude)))
    return inboxes


def changed_files(listing: dict[str, str], cursor: dict[str, str]) -> list[str]:
    return sorted(uri for uri, fingerprint in listing.items() if cursor.get(uri) != fingerprint)


def inbox_tick(
    context: dg.SensorEvaluationContext, inboxes: Iterable[Inbox], storage: ObjectStore, tags: dict[str, str],
    seed_from: dg.AssetKey | None = None,
) -> dg.SensorResult:
    """One run for the files that are new or changed since the cursor.

    The cursor (every file's fingerprint) is committed with the run request; the run key hashes the previous
    cursor and the files, so a tick retried after a crash or a daemon restart asks for the same run and
    Dagster drops the duplicate. A sensor without a cursor (first start, e.g. `make dev` after `make demo`) but
    whose target `seed_from` was materialized already begins from that materialization: files not modified
    since then count as collected (`seeded_cursor`), so unchanged data starts no run.
    """
    inboxes = list(inboxes)
    client = storage.get_client() if any(i.url.startswith("s3://") for i in inboxes) else None
    listing: dict[str, str] = {}
    for inbox in inboxes:
        listing.update(inbox.list(client))
    seeded = ""
    if context.cursor:
        cursor = json.loads(context.cursor)
    else:
        latest = context.instance.get_latest_materialization_event(seed_from) if seed_from else None
        cursor = seeded_cursor(listing, latest.timestamp) if latest else {}
        if latest:
            seeded = (f"; began from the materialization of {seed_from.to_user_string()} at "
                      f"{datetime.fromtimestamp(latest.timestamp, UTC):%Y-%m-%d %H:%M:%S} UTC")
    files = changed_files(listing, cursor)
    next_cursor = json.dumps(listing, sort_keys=True)
    if not files:
        return dg.SensorResult(skip_reason=f"No new or changed files in {len(listing)} watched{seeded}",
                               cursor=next_cursor)
    run_key = hashlib.sha256(
        json.dumps([context.cursor or "", [[f, listing[f]] for f in files]]).encode()
    ).hexdigest()
    context.log.info(f"{len(files)} new or changed files{seeded}: {', '.join(files[:20])}")
    request = dg.RunRequest(run_key=run_key, tags={**tags, INBOX_FILES_TAG: json.dumps(files)})
    return dg.SensorResult(run_requests=[request], cursor=next_cursor)


def seeded_cursor(listing: dict[str, str], materialized_at: float) -> dict[str, str]:
    """The files a materialization at `materialized_at` (epoch seconds) has seen: local files (fingerprint
    `size:ISO mtime`) not modified since; S3 objects (fingerprint: ETag, no time) all of them."""
    def seen(fingerprint: str) -> bool:
        _, _, modified = fingerprint.partition(":")
        try:
            return datetime.fromisoformat(modified).timestamp() <= materialized_at
        except ValueError:
            return True
    return {uri: fingerprint for uri, fingerprint in listing.items() if seen(fingerprint)}


def inbox_sensor(spec: DatasetSpec, target: list[dg.AssetKey]) -> dg.SensorDefinition:
    inboxes = source_inboxes(spec)
    where = ", ".join(i.url for i in inboxes) or "(no folder or S3 source)"

    @dg.sensor(
        name=f"{spec.name}_inbox_sensor",
        description=f"Collects {spec.name} when files are added or changed in {where}.",
        target=target,
        minimum_interval_seconds=INBOX_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def _sensor(context: dg.SensorEvaluationContext, storage: ObjectStore) -> dg.SensorResult:
        return inbox_tick(context, inboxes, storage, {DATASET_TAG: spec.name, TRIGGER_TAG: "inbox"},
                          seed_from=key(spec, "collected"))

    return _sensor


def label_studio_sensor(spec: DatasetSpec, target: dg.AssetKey) -> dg.SensorDefinition:
    """Watches `<storage>/<annotation.label_studio.inbox>` (where `human_labels` reads) for Label Studio exports."""
    prefix = spec.annotation.label_studio.inbox

    @dg.sensor(
        name=f"{spec.name}_label_studio_sensor",
        description=f"Imports Label Studio exports dropped under {prefix}/ in storage.",
        target=[target],
        minimum_interval_seconds=INBOX_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def _sensor(context: dg.SensorEvaluationContext, storage: ObjectStore) -> dg.SensorResult:
        inbox = Inbox(storage.uri(prefix), include=("**/*.json",))
        return inbox_tick(context, [inbox], storage, {DATASET_TAG: spec.name, TRIGGER_TAG: "label_studio"},
                          seed_from=target)

    return _sensor


def recollect_schedule(spec: DatasetSpec, target: list[dg.AssetKey]) -> dg.ScheduleDefinition:
    automation = spec.automation
    return dg.ScheduleDefinition(
        name=f"{spec.name}_recollect_schedule",
        description=f"Re-collects {spec.name}'s sources ({automation.schedule}, {automation.timezone}).",
        cron_schedule=automation.schedule,
        execution_timezone=automation.timezone,
        target=target,
        tags={DATASET_TAG: spec.name, TRIGGER_TAG: "schedule"},
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )


# --- declarative automation ---------------------------------------------------------------------------
def stage_condition(spec: DatasetSpec, stage: str) -> dg.AutomationCondition | None:
    """Collection and imports are started by schedules and sensors; everything else follows its inputs."""
    if stage == LABEL_STUDIO_IMPORT_STAGE:
        # Once when missing (an empty import), so the eager `annotated` below it is not blocked forever.
        return dg.AutomationCondition.on_missing()
    if stage in SENSOR_DRIVEN_STAGES:
        return None
    if stage in LLM_STAGES and spec.synthesis and spec.synthesis.schedule:
        timezone = spec.automation.timezone if spec.automation else "UTC"
        return dg.AutomationCondition.on_cron(spec.synthesis.schedule, timezone)
    return dg.AutomationCondition.eager()


def is_llm_stage(spec: DatasetSpec, stage: str) -> bool:
    return stage in LLM_STAGES or (stage == "annotated" and bool(spec.annotation) and spec.annotation.labeler == "llm")


def defined_asset_keys(defs: dg.Definitions) -> set[dg.AssetKey]:
    keys: set[dg.AssetKey] = set()
    for asset in defs.assets or []:
        keys.update(asset.keys if isinstance(asset, dg.AssetsDefinition) else [asset.key])
    return keys


def concurrency_class(spec: DatasetSpec, stage: str) -> str | None:
    return "milvus" if stage in MILVUS_STAGES else "llm" if is_llm_stage(spec, stage) else None


def automation_sensors() -> list[dg.SensorDefinition]:
    """One automation-condition sensor per concurrency class (the assets' CONCURRENCY_TAG): the runs it launches
    carry that class's run tag, which the instance's tag_concurrency_limits bound."""
    tagged = {name: dg.AssetSelection.tag(CONCURRENCY_TAG, name) for name in ("milvus", "llm")}
    sensors = [
        dg.AutomationConditionSensorDefinition(
            "datamate_automation", target=dg.AssetSelection.all() - tagged["milvus"] - tagged["llm"],
            default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=AUTOMATION_INTERVAL_SECONDS,
        )
    ]
    for name, tag in (("milvus", MILVUS_TAG), ("llm", LLM_TAG)):
        sensors.append(dg.AutomationConditionSensorDefinition(
            f"datamate_{name}_automation", target=tagged[name], run_tags={tag: name},
            default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=AUTOMATION_INTERVAL_SECONDS,
        ))
    return sensors


# --- failures -----------------------------------------------------------------------------------------
def failure_summary(context: dg.RunFailureSensorContext) -> dict:
    run = context.dagster_run
    keys = sorted(run.asset_selection or [], key=lambda k: k.to_user_string())
    datasets = sorted({k.path[0] for k in keys}) or [run.tags.get(DATASET_TAG, "?")]
    stages = sorted({k.path[-1] for k in keys}) or [run.job_name]
    errors = [
        f"{event.step_key}: {event.event_specific_data.error.message.strip()}"
        for event in context.get_step_failure_events()
        if event.event_specific_data and event.event_specific_data.error
    ] or [context.failure_event.message or "run failed"]
    text = (f"DataMate run {run.run_id} failed. Dataset: {', '.join(datasets)}. Stage: {', '.join(stages)}. "
            f"Error: {' | '.join(errors)}")
    return {"text": text, "run_id": run.run_id, "datasets": datasets, "stages": stages, "errors": errors}


@dg.run_failure_sensor(
    name="datamate_failure_sensor",
    description=f"Logs which dataset and stage failed and why; POSTs it to ${FAILURE_WEBHOOK_ENV} when set.",
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def failure_sensor(context: dg.RunFailureSensorContext) -> None:
    summary = failure_summary(context)
    context.log.error(summary["text"])
    url = os.environ.get(FAILURE_WEBHOOK_ENV)
    if not url:
        return
    try:  # why: a webhook outage must not fail the sensor; the URL may hold a token, so it is never logged
        requests.post(url, json=summary, timeout=10).raise_for_status()
    except requests.RequestException as error:
        context.log.warning(f"Failure webhook (${FAILURE_WEBHOOK_ENV}) did not accept the summary: "
                            f"{type(error).__name__}")


# --- wiring -------------------------------------------------------------------------------------------
def dataset_automation(spec: DatasetSpec, stages: dg.Definitions) -> dg.Definitions:
    """One dataset's stage definitions with their automation conditions and concurrency tags, plus the dataset's
    schedule and sensors (what `DatasetComponent.build_defs` adds to the stages it builds)."""

    def automate(asset_spec: dg.AssetSpec) -> dg.AssetSpec:
        stage = asset_spec.key.path[-1]
        if asset_spec.automation_condition is None and (condition := stage_condition(spec, stage)):
            asset_spec = asset_spec.replace_attributes(automation_condition=condition)  # a stage's own one stays
        if concurrency := concurrency_class(spec, stage):
            asset_spec = asset_spec.merge_attributes(tags={CONCURRENCY_TAG: concurrency})
        return asset_spec

    with warnings.catch_warnings():  # why: map_asset_specs is marked preview; its warning would flood every load
        warnings.simplefilter("ignore", dg.PreviewWarning)
        stages = stages.map_asset_specs(func=automate)
    keys = defined_asset_keys(stages)
    sensors: list[dg.SensorDefinition] = []
    schedules: list[dg.ScheduleDefinition] = []
    collection = [key(spec, stage) for stage in COLLECTION_STAGES if key(spec, stage) in keys]
    if collection and spec.automation and spec.automation.schedule:
        schedules.append(recollect_schedule(spec, collection))
    if collection and spec.automation and spec.automation.inbox_sensor:
        sensors.append(inbox_sensor(spec, collection))
    ls_import = key(spec, LABEL_STUDIO_IMPORT_STAGE)
    if ls_import in keys and spec.annotation and spec.annotation.label_studio:
        sensors.append(label_studio_sensor(spec, ls_import))
    return dg.Definitions.merge(stages, dg.Definitions(sensors=sensors, schedules=schedules))


def project_automation() -> dg.Definitions:
    """What serves every dataset of a project: the run-failure sensor and the automation-condition sensors."""
    return dg.Definitions(sensors=[failure_sensor, *automation_sensors()])
