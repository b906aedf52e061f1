"""Wiring of the stages that run on Ray shard by shard (`operators.ray_shards`): chunks, annotated, indexed.

The step connects the `ray` resource, logs where the work runs (cluster, dashboard), lets the actors read the
input version and write the output parts, commits the parts as one version of `<dataset>/<stage>` and turns the
run's counters and actor utilisation into metadata. Documents never pass through the step's process.
"""

from collections.abc import Callable
from typing import Any

import dagster as dg
import pyarrow as pa

from datamate_assets.spec import RaySection
from datamate_resources import tables
from datamate_resources.ray import DatamateRay
from datamate_resources.storage import ObjectStore
from datamate_resources.tables import TableRef
from operators.evaluation.report import markdown_table
from operators.ray_shards import Processor, RayStageResources, ShardRun, map_shards


def stage_resources(section: RaySection) -> RayStageResources:
    return RayStageResources(cpus_per_actor=section.cpus_per_actor, actors=section.actors,
                             memory_mb=section.memory_mb, rows_per_shard=section.rows_per_shard)


def run_on_ray(context: dg.AssetExecutionContext, ray_resource: DatamateRay, storage: ObjectStore, dataset: str,
               stage: str, source: TableRef, columns: list[str] | None, make_processor: Callable[[], Processor],
               schema: pa.Schema, section: RaySection) -> tuple[TableRef, ShardRun]:
    """Process `source` on Ray into a new version of `<dataset>/<stage>` (overwritten, like `tables.write`)."""
    import ray

    name = f"{dataset}/{stage}"
    cluster = ray.cluster_resources()
    dashboard = ray_resource.dashboard_url or "none (local Ray; a cluster from DATAMATE_RAY_ADDRESS has one)"
    context.log.info(f"{name} on {ray_resource.name}: {cluster.get('CPU', 0):g} CPUs, dashboard {dashboard}")
    run = map_shards(source, columns, make_processor, tables.table_uri(storage, dataset, stage),
                     tables.delta_options(storage), schema, stage_resources(section), name, log=context.log.info)
    ref = tables.commit_parts(storage, dataset, stage, run.parts, schema, run_id=context.run.run_id)
    utilisation = ", ".join(f"{actor['utilisation']:.0%}" for actor in run.actors)
    context.log.info(f"{name}: committed version {ref.version} ({len(run.parts)} parts); actor utilisation "
                     f"{utilisation}")
    return ref, run


def ray_metadata(run: ShardRun) -> dict[str, Any]:
    """What the asset shows about the Ray part of its run."""
    return {
        "ray_actors": len(run.actors),
        "ray_shards": run.shards,
        "ray_seconds": dg.MetadataValue.float(round(run.seconds, 2)),
        "ray_actor_startup_seconds": dg.MetadataValue.float(round(run.startup_seconds, 2)),
        "ray_mean_actor_utilisation": dg.MetadataValue.float(round(run.mean_utilisation, 3)),
        "ray_actor_utilisation": dg.MetadataValue.md(markdown_table(run.actors)),
    }
