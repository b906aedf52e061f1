"""A table-to-table stage on Ray with no driver in the data path (chunking, annotation, embedding).

The run process plans shards from the input table's Parquet footers (file, row group, row range), starts a pool
of actors and keeps every actor busy by queueing `IN_FLIGHT_PER_ACTOR` shards on each. An actor reads its shard
straight from the Delta table version (URI, version and storage options travel, never rows), runs the stage's
processor on it, writes the output rows as one Parquet part straight into the output table's folder and returns
the part's name, rows and bytes, and a few counters. The run process then commits every part as one Delta version
(`datamate_resources.tables.commit_parts`). Documents never reach it.

Actors rather than tasks because the heavy processors hold a model: it loads once per actor, not per shard.
Each actor measures its busy time; utilisation = busy time / the pool's wall time (from every actor ready
to the last shard done), reported per actor.

No Dagster here: the stages' processors are picklable factories (`make_processor()` runs on the actor).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq

IN_FLIGHT_PER_ACTOR = 2  # one running, one waiting: an actor never idles for a round trip to the driver
MAX_EXAMPLES = 20  # example values (ids) a fold keeps per list counter


class TableSource(Protocol):
    """What the workers need to read a table version (a `TableRef` is one)."""

    uri: str
    version: int
    storage_options: dict[str, str]


Processor = Callable[[pa.Table], tuple[pa.Table, dict[str, Any]]]


@dataclass(frozen=True)
class RayStageResources:
    """What one stage reserves on the cluster (the spec's `ray:` section)."""

    cpus_per_actor: float = 1.0
    actors: int | None = None  # None: as many as the cluster's CPUs allow
    memory_mb: int | None = None  # reserved per actor (Ray's `memory` resource)
    rows_per_shard: int = 512

    def actor_count(self, cluster: dict[str, float], stage: str) -> int:
        """The actors to start; a clear error when the cluster cannot hold what the spec asks for."""
        cpus = cluster.get("CPU", 0)
        memory_mb = cluster.get("memory", 0) / 2**20
        fits = int(cpus // self.cpus_per_actor)
        if self.memory_mb:
            fits = min(fits, int(memory_mb // self.memory_mb))
        if fits < 1:
            raise ValueError(
                f"{stage}: one actor needs {self.cpus_per_actor} CPU and {self.memory_mb or 0} MB "
                f"(ray.cpus_per_actor, ray.memory_mb) but the Ray cluster has {cpus:g} CPUs and "
                f"{memory_mb:.0f} MB: lower them or add nodes")
        if self.actors is not None and self.actors > fits:
            raise ValueError(
                f"{stage}: ray.actors is {self.actors} but the Ray cluster holds at most {fits} actors of "
                f"{self.cpus_per_actor} CPU{f' and {self.memory_mb} MB' if self.memory_mb else ''} "
                f"({cpus:g} CPUs, {memory_mb:.0f} MB): the extra actors would wait forever")
        return self.actors or fits


@dataclass(frozen=True)
class Shard:
    """Rows [offset, offset + rows) of one row group of one Parquet file of the input version."""

    file: str
    row_group: int
    offset: int
    rows: int

    def describe(self) -> str:
        return f"{self.file} row group {self.row_group} rows {self.offset}-{self.offset + self.rows - 1}"


@dataclass
class ShardRun:
    """What came back to the run process: part entries, folded counters and per-actor utilisation."""

    parts: list[tuple[str, int, int]] = field(default_factory=list)  # (file name, rows, bytes)
    counters: dict[str, Any] = field(default_factory=dict)
    actors: list[dict[str, float]] = field(default_factory=list)  # per actor: busy_s, wall_s, utilisation
    shards: int = 0
    rows_in: int = 0
    rows_out: int = 0
    seconds: float = 0.0  # the pool's wall time
    startup_seconds: float = 0.0  # starting the actors and loading their models

    @property
    def mean_utilisation(self) -> float:
        return sum(a["utilisation"] for a in self.actors) / len(self.actors) if self.actors else 0.0


def plan_shards(source: TableSource, rows_per_shard: int) -> list[Shard]:
    """Shards of at most `rows_per_shard` rows, from the Parquet footers of the version's files (no rows read)."""
    shards = []
    for fragment in _dataset(source.uri, source.version, _frozen(source.storage_options)).get_fragments():
        for group in fragment.row_groups:
            for offset in range(0, group.num_rows, rows_per_shard):
                shards.append(Shard(fragment.path, group.id, offset, min(rows_per_shard, group.num_rows - offset)))
    return shards


def fold(total: dict[str, Any], counters: dict[str, Any]) -> dict[str, Any]:
    """Numbers add up, lists (examples) concatenate up to `MAX_EXAMPLES`, mappings (distributions) add per key."""
    for name, value in counters.items():
        if isinstance(value, dict):
            bucket = total.setdefault(name, {})
            for k, n in value.items():
                bucket[k] = bucket.get(k, 0) + n
        elif isinstance(value, list):
            kept = total.setdefault(name, [])
            kept += value[: MAX_EXAMPLES - len(kept)]
        else:
            total[name] = total.get(name, 0) + value
    return total


class ShardWorker:
    """A Ray actor (wrapped by `ray.remote` in `map_shards`): reads a shard, processes it, writes a part."""

    def __init__(self, source: TableSource, columns: list[str] | None, make_processor: Callable[[], Processor],
                 output_uri: str, output_options: dict[str, str], schema: pa.Schema, prefix: str):
        self.source, self.columns, self.schema, self.prefix = source, columns, schema, prefix
        self.output_uri, self.output_options = output_uri, output_options
        self.process = make_processor()
        self.busy = 0.0

    def ready(self) -> bool:
        return True

    def run(self, number: int, shard: Shard) -> dict[str, Any]:
        began = time.perf_counter()
        rows = read_shard(self.source, shard, self.columns)
        try:
            output, counters = self.process(rows)
        except ValueError as error:  # bad input: say where it is
            raise ValueError(f"{self.source.uri} version {self.source.version}, {shard.describe()}: {error}") from error
        output = output.select(self.schema.names).cast(self.schema)
        part = write_part(output, self.output_uri, self.output_options, f"{self.prefix}-{number:06d}.parquet")
        self.busy += time.perf_counter() - began
        return {"part": part, "counters": counters, "rows_in": rows.num_rows, "rows_out": output.num_rows}

    def busy_seconds(self) -> float:
        return self.busy


def map_shards(source: TableSource, columns: list[str] | None, make_processor: Callable[[], Processor],
               output_uri: str, output_options: dict[str, str], schema: pa.Schema, resources: RayStageResources,
               stage: str, log: Callable[[str], None] = print, progress_every: float = 30.0) -> ShardRun:
    """Run the processor over every shard of `source` on the connected Ray cluster; parts land in `output_uri`.

    Nothing is committed here: the caller commits `ShardRun.parts` as one version (or leaves the files to the
    table's vacuum if it fails)."""
    import ray

    shards = plan_shards(source, resources.rows_per_shard)
    count = resources.actor_count(ray.cluster_resources(), stage)
    if not shards:
        log(f"{stage}: the input version {source.version} has no rows")
        return ShardRun()
    count = max(1, min(count, len(shards)))  # an actor with no shard would only lower the utilisation
    options: dict[str, Any] = {"num_cpus": resources.cpus_per_actor, "max_restarts": 2, "max_task_retries": 2}
    if resources.memory_mb:
        options["memory"] = resources.memory_mb * 2**20
    worker = ray.remote(**options)(ShardWorker)
    prefix = f"part-{uuid.uuid4().hex[:12]}"
    run = ShardRun(shards=len(shards))
    started = time.perf_counter()
    actors = [worker.remote(source, columns, make_processor, output_uri, output_options, schema, prefix)
              for _ in range(count)]
    try:
        ray.get([actor.ready.remote() for actor in actors])
        run.startup_seconds = time.perf_counter() - started
        log(f"{stage}: {len(shards)} shards of at most {resources.rows_per_shard} rows on {count} Ray actors "
            f"({resources.cpus_per_actor} CPU each; started in {run.startup_seconds:.1f}s)")
        _drive(actors, shards, run, stage, log, progress_every)
    finally:  # also when a shard fails: no actor outlives the step
        for actor in actors:
            ray.kill(actor)
    return run


def _drive(actors: list, shards: list[Shard], run: ShardRun, stage: str, log: Callable[[str], None],
           progress_every: float) -> None:
    """Keep `IN_FLIGHT_PER_ACTOR` shards queued on every actor until all are done; fold what comes back."""
    import ray

    started = last_report = time.perf_counter()
    queue = list(enumerate(shards))[::-1]
    pending: dict[Any, int] = {}  # result ref -> actor index

    def submit(index: int) -> None:
        number, shard = queue.pop()
        # named after the stage, so the dashboard and the state API tell the stages' tasks apart
        pending[actors[index].run.options(name=f"ShardWorker.run[{stage}]").remote(number, shard)] = index

    for index in range(len(actors)):
        for _ in range(IN_FLIGHT_PER_ACTOR):
            if queue:
                submit(index)
    done = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(ready[0])
        result = ray.get(ready[0])
        run.parts.append(result["part"])
        fold(run.counters, result["counters"])
        run.rows_in += result["rows_in"]
        run.rows_out += result["rows_out"]
        done += 1
        if queue:
            submit(index)
        now = time.perf_counter()
        if now - last_report >= progress_every or not pending:
            last_report = now
            log(f"{stage}: {done}/{len(shards)} shards, {run.rows_in} rows in, {run.rows_out} out "
                f"({run.rows_in / max(now - started, 1e-9):.1f} rows/s)")
    run.seconds = time.perf_counter() - started
    busy = ray.get([actor.busy_seconds.remote() for actor in actors])
    run.actors = [{"actor": i, "busy_s": round(b, 2), "wall_s": round(run.seconds, 2),
                   "utilisation": round(min(b / max(run.seconds, 1e-9), 1.0), 3)} for i, b in enumerate(busy)]


# --- reading and writing on the workers ---------------------------------------------------------------------
def _frozen(options: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((options or {}).items()))


@lru_cache(maxsize=4)
def _dataset(uri: str, version: int, options: tuple[tuple[str, str], ...]) -> pds.Dataset:
    """The version's pyarrow dataset, opened once per worker process (its log is read once, not per shard)."""
    from deltalake import DeltaTable

    return DeltaTable(uri, version=version, storage_options=dict(options) or None).to_pyarrow_dataset()


@lru_cache(maxsize=4)
def _fragments(uri: str, version: int, options: tuple[tuple[str, str], ...]) -> dict[str, pds.Fragment]:
    return {fragment.path: fragment for fragment in _dataset(uri, version, options).get_fragments()}


def read_shard(source: TableSource, shard: Shard, columns: list[str] | None) -> pa.Table:
    key = (source.uri, source.version, _frozen(source.storage_options))
    fragment = _fragments(*key).get(shard.file)
    if fragment is None:
        raise FileNotFoundError(f"{source.uri} version {source.version} has no file {shard.file}")
    group = fragment.subset(row_group_ids=[shard.row_group])
    return group.to_table(columns=columns, schema=_dataset(*key).schema).slice(shard.offset, shard.rows)


def _filesystem(uri: str, options: dict[str, str]):
    """pyarrow's filesystem and path for a table folder: local, or S3 from the Delta storage options."""
    from pyarrow import fs

    if not uri.startswith("s3://"):
        return fs.LocalFileSystem(), uri
    endpoint = options.get("aws_endpoint_url")
    s3 = fs.S3FileSystem(
        access_key=options.get("aws_access_key_id"), secret_key=options.get("aws_secret_access_key"),
        region=options.get("aws_region", "us-east-1"),
        endpoint_override=endpoint.split("://", 1)[-1] if endpoint else None,
        scheme="http" if endpoint and endpoint.startswith("http://") else "https",
    )
    return s3, uri.removeprefix("s3://")


def write_part(table: pa.Table, output_uri: str, options: dict[str, str], name: str) -> tuple[str, int, int]:
    """One Parquet file in the table's folder: (its name, rows, bytes), what `tables.commit_parts` takes."""
    filesystem, folder = _filesystem(output_uri, options)
    path = f"{folder.rstrip('/')}/{name}"
    if not output_uri.startswith("s3://"):
        os.makedirs(folder, exist_ok=True)
    pq.write_table(table, path, filesystem=filesystem, row_group_size=10_000)
    return name, table.num_rows, filesystem.get_file_info(path).size
