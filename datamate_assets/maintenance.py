"""Retention and housekeeping: a dataset's `retention:` section becomes the `<dataset>_maintenance` job and its
schedule. The job compacts each of the dataset's Delta tables, deletes the files no kept version needs (vacuum)
and expired log entries, and records what it removed: per table as an observation on the stage's asset (its
Events and Plots tabs in the UI), and in total in the run's output metadata.

Versions a Dagster materialization recorded stay readable whatever the policy: downstream steps read exactly them.
"""

import dagster as dg
from deltalake.exceptions import DeltaError

from datamate_assets.automation import DATASET_TAG, TRIGGER_TAG
from datamate_assets.spec import DatasetSpec
from datamate_resources import tables
from datamate_resources.io_manager import recorded_version
from datamate_resources.storage import ObjectStore


def build_defs(spec: DatasetSpec) -> dg.Definitions:
    retention = spec.retention
    if retention is None:
        return dg.Definitions()

    @dg.op(name=f"{spec.name}_maintain_tables", description=f"Compacts and vacuums {spec.name}'s Delta tables.")
    def maintenance(context: dg.OpExecutionContext, storage: ObjectStore) -> None:
        totals = {"tables": 0, "files_compacted": 0, "files_removed": 0, "bytes_removed": 0}
        failed = []
        for stage in tables.stages(storage, spec.name):
            asset_key = dg.AssetKey([spec.name, stage])
            try:
                done = tables.housekeep(
                    storage, spec.name, stage, retention.keep_versions, retention.keep_days, retention.compact,
                    retention.min_file_age_hours, protect=_recorded(context.instance, asset_key),
                    run_id=context.run.run_id,
                )
            except (tables.TableError, DeltaError) as error:  # why: one table's fault must not stop the others
                context.log.error(f"{spec.name}/{stage}: {tables.reason(error)}")
                failed.append(f"{stage}: {tables.reason(error)}")
                continue
            context.log_event(dg.AssetObservation(asset_key=asset_key, metadata={
                "files_compacted": done["files_compacted"],
                "files_removed": done["files_removed"],
                "bytes_removed": done["bytes_removed"],
                "kept_versions": dg.MetadataValue.json(done["kept_versions"]),
            }))
            totals["tables"] += 1
            for name in ("files_compacted", "files_removed", "bytes_removed"):
                totals[name] += done[name]
        context.add_output_metadata(totals)
        if failed:
            raise dg.Failure(f"{len(failed)} table(s) of {spec.name} could not be maintained", metadata={
                "errors": dg.MetadataValue.md("\n".join(f"- {line}" for line in failed))})

    policy = ", ".join(
        part for part in (
            f"last {retention.keep_versions} versions" if retention.keep_versions else "",
            f"{retention.keep_days:g} days" if retention.keep_days else "",
        ) if part
    ) or "every version"
    tags = {DATASET_TAG: spec.name, TRIGGER_TAG: "maintenance"}

    @dg.job(name=f"{spec.name}_maintenance", tags=tags,
            description=f"Housekeeping of {spec.name}'s tables: keeps {policy}"
                        f"{', compacts small files' if retention.compact else ''}.")
    def maintenance_job():
        maintenance()

    schedule = dg.ScheduleDefinition(
        name=f"{spec.name}_maintenance_schedule", job=maintenance_job, cron_schedule=retention.schedule,
        execution_timezone=retention.timezone, tags=tags, default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Runs {spec.name}_maintenance ({retention.schedule}, {retention.timezone}).",
    )
    return dg.Definitions(jobs=[maintenance_job], schedules=[schedule])


def _recorded(instance: dg.DagsterInstance, asset_key: dg.AssetKey) -> list[int]:
    version = recorded_version(instance, asset_key)
    return [] if version is None else [version]
