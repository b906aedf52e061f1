"""Cleaning stage: `<dataset>/collected` → `<dataset>/cleaned` + `<dataset>/cleaning_drops` with the spec's recipe.

The collected table is streamed in batches through the recipe (operators/stream.py); kept rows and drops are
spilled to local files as they come, then committed as one Delta version each. Incremental: documents that
already went through the same recipe (previous `cleaned` or `cleaning_drops` with the same recipe_hash) are left
as they are; only new or changed documents run, deduplicated against the previously kept ones, and their results
are merged in (removed documents deleted). A recipe change changes the code version and reprocesses all.
"""

import contextlib
import json
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds

from datamate_assets.keys import key
from datamate_assets.ray_stages import stage_resources
from datamate_assets.spec import DatasetSpec
from datamate_resources import tables
from datamate_resources.ray import DatamateRay
from datamate_resources.storage import ObjectStore
from datamate_resources.tables import TableRef
from operators.analysis import quantile_table, sample_batches, summarize
from operators.dj_config import load_config
from operators.evaluation.report import markdown_image
from operators.parquet import parquet_batches
from operators.ray_exec import Destination, Outputs, Part, Source, identity_of, read_parts, run_ray_tables
from operators.ray_shards import RayStageResources
from operators.recipe import STATS, Recipe, StepStats, stats_type
from operators.stream import INDEX_SCHEMA, ParquetSink, run_stream

DROPS_COLUMNS = ["doc_id", "source_uri", "operator", "reason", "text"]


def stats_table(stats: list[StepStats]) -> str:
    header = "| # | operator | in | out | changed | dropped | errors | seconds |\n|---|---|---|---|---|---|---|---|"
    rows = [f"| {s.step} | `{s.operator}` | {s.docs_in} | {s.docs_out} | {s.changed} | {s.dropped} | {s.errors} "
            f"| {s.seconds:.2f} |" for s in stats]
    return "\n".join([header, *rows])


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")[:200]


def examples_markdown(stats: list[StepStats]) -> str:
    """Before/after (mappers) and dropped-with-reason (filters, dedup) examples per operator."""
    lines = []
    for s in stats:
        if not s.examples:
            continue
        lines.append(f"**{s.step}. `{s.operator}`**\n")
        if "before" in s.examples[0]:
            lines += ["| before | after |", "|---|---|"]
            lines += [f"| {_cell(e['before'])} | {_cell(e['after'])} |" for e in s.examples if "before" in e]
        else:
            lines += ["| dropped | reason |", "|---|---|"]
            lines += [f"| {_cell(e['dropped'])} | {_cell(e['reason'])} |" for e in s.examples if "dropped" in e]
        lines.append("")
    return "\n".join(lines) or "_no document was changed or dropped_"


def build_defs(spec: DatasetSpec) -> dg.Definitions:
    if spec.cleaning is None:
        return dg.Definitions()
    section = spec.cleaning
    # Fails at load time with operator, parameter and reason, before any data is read.
    if section.config:  # a Data-Juicer config file, relative to the spec
        base = spec.spec_path.parent if spec.spec_path else Path.cwd()
        recipe = load_config(base / section.config).recipe
    else:
        recipe = Recipe.from_process(section.process, section.text_key)
    cleaned_key, drops_key = key(spec, "cleaned"), key(spec, "cleaning_drops")

    def clean(context: dg.AssetExecutionContext, storage: ObjectStore, collected: TableRef, ray_name: str | None):
        plan = Plan.make(storage, spec.name, recipe, collected)
        context.log.info(f"{plan.new_count} new or changed documents to clean, {plan.reused} reused, "
                         f"{plan.removed_count} removed (recipe {recipe.hash})")
        with tempfile.TemporaryDirectory(prefix="datamate-cleaning-") as work:
            kept, drops = ParquetSink(Path(work) / "kept.parquet"), ParquetSink(Path(work) / "drops.parquet")
            index_parts = None
            if ray_name is not None and plan.new_count:
                # Ray workers read `collected` and write the results; only statistics and file names come back.
                kept, drops, index_parts, stats = _clean_on_ray(storage, spec.name, recipe, plan, ray_name,
                                                                stage_resources(section.ray), context.run.run_id,
                                                                context.log.info)
            else:  # (on Ray with nothing new, there is nothing to send: the removals are applied here)
                stats = run_stream(recipe, plan.new_batches(), Path(work), kept, drops, index=plan.signatures(),
                                   identity=_identity, num_proc=section.num_proc, log=context.log.info).stats
                kept.close()
                drops.close()
            plots = _statistics(recipe, kept, drops)
            cleaned_ref, drops_ref, index_ref = plan.commit(storage, spec.name, Path(work), kept, drops,
                                                             context.run.run_id, index_parts)
            if index_parts is not None:
                _remove_scratch(storage, spec.name, context.run.run_id)
        cumulative = _cumulative(context, cleaned_key, stats, plan.incremental)
        metadata = {**_metadata(recipe, plan, stats, cumulative, kept.rows, drops.rows), **plots}
        if index_ref is not None:  # kept beside the table it indexes; `datamate datasets` lists it too
            metadata["signature_index"] = dg.MetadataValue.md(f"`{index_ref.uri}` version {index_ref.version}, "
                                                              f"{index_ref.num_rows} rows")
        # Both tables are always written together (incremental runs read both); a subset reports what it selected.
        if cleaned_key in context.selected_asset_keys:
            yield dg.Output(cleaned_ref, "cleaned", metadata=metadata)
        if drops_key in context.selected_asset_keys:
            yield dg.Output(drops_ref, "cleaning_drops", metadata={
                "by_operator": dg.MetadataValue.md(_drops_by_operator(drops_ref)),
            })

    # Only datasets that run on Ray ask for the Ray resource, so a local run never starts Ray.
    if section.executor == "ray":
        def compute(context: dg.AssetExecutionContext, storage: ObjectStore, ray: DatamateRay, collected: TableRef):
            yield from clean(context, storage, collected, ray_name=ray.name)
    else:
        def compute(context: dg.AssetExecutionContext, storage: ObjectStore, collected: TableRef):
            yield from clean(context, storage, collected, ray_name=None)

    cleaning = dg.multi_asset(
        name=f"{spec.name}_cleaning",
        group_name=spec.name,
        ins={"collected": dg.AssetIn(key(spec, "collected"))},
        outs={
            "cleaned": dg.AssetOut(key=cleaned_key, code_version=recipe.hash, is_required=False,
                                   description=f"Collected documents after the cleaning recipe {recipe.hash}"),
            "cleaning_drops": dg.AssetOut(key=drops_key, code_version=recipe.hash, is_required=False,
                                          description="Documents the recipe dropped, with operator and reason"),
        },
        can_subset=True,  # `--select '*mydocs/indexed'` selects `cleaned` without its drops
    )(compute)
    return dg.Definitions(assets=[cleaning])


DELETED = "__deleted"
IDENTITY = ["doc_id", "source_uri"]
STATS_SAMPLE = 50_000  # documents whose statistics are plotted
INDEX_STAGE = "dedup_index"  # the signature index of the published documents, beside `cleaned`


def _identity(table: pa.Table | pa.RecordBatch) -> pa.Array:
    """A document is the same when both its text (doc_id) and its source are: identical copies from two sources
    are two inputs, and one of them is a duplicate."""
    return identity_of(table, IDENTITY)


class Plan:
    """What a run does, decided on the identity columns only (the texts are never loaded)."""

    def __init__(self, collected: TableRef, previous: TableRef | None, index: TableRef | None, recipe: Recipe,
                 done: pa.Array | None = None, current: pa.Array | None = None):
        """A first run (no `previous`) cleans every collected document and reads no identities; an incremental
        one compares the identities of what is collected now (`current`) with what was cleaned (`done`)."""
        self.collected, self.previous, self.index, self.recipe = collected, previous, index, recipe
        self.incremental = previous is not None
        self.current = current
        if self.incremental:
            self.new = pc.filter(current, pc.invert(pc.is_in(current, done)))
            self.removed = pc.filter(done, pc.invert(pc.is_in(done, current)))
            self.collected_count = len(current)
        else:
            self.new, self.removed = None, pa.array([], pa.string())
            self.collected_count = collected.num_rows  # from the Delta log's file statistics
        self.new_count = len(self.new) if self.incremental else self.collected_count
        self.removed_count = len(self.removed)
        self.reused = self.collected_count - self.new_count

    @classmethod
    def make(cls, storage: ObjectStore, dataset: str, recipe: Recipe, collected: TableRef) -> "Plan":
        previous = tables.current(storage, dataset, "cleaned")
        previous_drops = tables.current(storage, dataset, "cleaning_drops")
        index = tables.current(storage, dataset, INDEX_STAGE)
        if previous is None or previous_drops is None or index is None or not _same_recipe(previous, recipe):
            return cls(collected, None, None, recipe)
        current = _identity(collected.read(IDENTITY)).combine_chunks()
        done = pa.concat_arrays([_identity(ref.read(IDENTITY)).combine_chunks().cast(pa.string())
                                 for ref in (previous, previous_drops)])
        return cls(collected, previous, index, recipe, done, current)

    def new_batches(self) -> Iterator[pa.RecordBatch]:
        for batch in self.collected.batches():
            if self.incremental:
                batch = batch.filter(pc.is_in(_identity(batch), self.new))
            if batch.num_rows:
                yield batch

    def signatures(self) -> Callable[[int], Iterator[pa.RecordBatch]] | None:
        """The signature index rows of the published documents still collected, per dedup step."""
        if not self.incremental:
            return None

        def rows(step: int) -> Iterator[pa.RecordBatch]:
            for batch in self.index.batches(filter=pds.field("step") == step):
                batch = batch.filter(pc.is_in(batch.column("identity"), self.current))
                if batch.num_rows:
                    yield batch
        return rows

    def schemas(self) -> tuple[pa.Schema, pa.Schema]:
        """The `cleaned` and `cleaning_drops` tables' schemas."""
        # per-document filter statistics (Data-Juicer's __dj__stats__) ride along in both tables, to re-tune by
        stats = [pa.field(STATS, stats_type(self.recipe.operators))] if stats_type(self.recipe.operators) else []
        kept_schema = pa.schema([*(f for f in self.collected.schema if f.name != STATS), *stats,
                                 pa.field("recipe_hash", pa.string())])
        return kept_schema, pa.schema([*((name, pa.string()) for name in DROPS_COLUMNS), *stats])

    def commit(self, storage: ObjectStore, dataset: str, work: Path, kept: "ParquetSink | RayParts",
               drops: "ParquetSink | RayParts", run_id: str, index_parts: "RayParts | None" = None
               ) -> tuple[TableRef, TableRef, TableRef | None]:
        """One version per table: written whole on a first run, merged (insert new, delete removed) after; the
        signature index rewritten whenever anything changed. Parts Ray workers wrote into a table's folder are
        committed as they are (`index_parts`, and `kept`/`drops` on a first run)."""
        kept_schema, drops_schema = self.schemas()
        refs = []
        for stage, sink, schema, shape in (("cleaned", kept, kept_schema, self._kept_rows),
                                           ("cleaning_drops", drops, drops_schema, _drops_rows)):
            if isinstance(sink, RayParts):  # written by the workers in the table's schema already
                shape = _as_table
            rows = (shape(batch).select(schema.names).cast(schema) for batch in sink.batches())
            if not self.incremental and isinstance(sink, RayParts):
                refs.append(tables.commit_parts(storage, dataset, stage, sink.files(), schema, run_id=run_id))
            elif not self.incremental:
                refs.append(tables.write(storage, dataset, stage, (b for t in rows for b in t.to_batches()),
                                         schema=schema, run_id=run_id))
            elif not sink.rows and not self.removed_count:  # nothing changed: the current version stands
                refs.append(tables.current(storage, dataset, stage))
            else:
                with_flag = pa.schema([*schema, pa.field(DELETED, pa.bool_())])
                changes = pa.RecordBatchReader.from_batches(with_flag, self._changes(rows, with_flag))
                refs.append(tables.merge(storage, dataset, stage, changes, IDENTITY, DELETED, run_id=run_id)[0])
        index = tables.current(storage, dataset, INDEX_STAGE)
        if index_parts is not None:
            index = tables.commit_parts(storage, dataset, INDEX_STAGE, index_parts.files(), INDEX_SCHEMA,
                                        run_id=run_id)
        elif not self.incremental or kept.rows or drops.rows or self.removed_count:
            index_file = work / "index.parquet"
            rows = parquet_batches(index_file, 10_000) if index_file.exists() else []
            index = tables.write(storage, dataset, INDEX_STAGE, rows, schema=INDEX_SCHEMA, run_id=run_id)
        return refs[0], refs[1], index

    def _kept_rows(self, batch: pa.RecordBatch) -> pa.Table:
        table = pa.Table.from_batches([batch])
        return table.append_column("recipe_hash", pa.repeat(pa.scalar(self.recipe.hash), table.num_rows))

    def _changes(self, rows: Iterator[pa.Table], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        for table in rows:
            yield from table.append_column(DELETED, pa.repeat(False, table.num_rows)).cast(schema).to_batches()
        if self.removed_count:
            doc_ids, sources = zip(*(value.as_py().split("\x1f", 1) for value in self.removed), strict=True)
            columns = {f.name: pa.nulls(self.removed_count, f.type) for f in schema}
            columns.update(doc_id=pa.array(doc_ids, pa.string()), source_uri=pa.array(sources, pa.string()),
                           **{DELETED: pa.repeat(True, self.removed_count)})
            yield pa.RecordBatch.from_pydict(columns, schema=schema)


class RayParts:
    """Parquet parts Ray workers wrote, read like a ParquetSink (the statistics sample, an incremental merge)."""

    def __init__(self, parts: list[Part], storage_options: dict[str, str]):
        self.parts, self.storage_options = parts, storage_options
        self.rows = sum(part.rows for part in parts)

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        return read_parts(self.parts, self.storage_options, columns)

    def files(self) -> list[tuple[str, int, int]]:
        return [(part.name, part.rows, part.bytes) for part in self.parts]


def _scratch(storage: ObjectStore, dataset: str, run_id: str, stage: str = "") -> str:
    """Where an incremental run's workers write the rows that are then merged into the tables."""
    return tables.table_uri(storage, dataset, f"_ray_scratch/{run_id}/{stage}".rstrip("/"))


def _remove_scratch(storage: ObjectStore, dataset: str, run_id: str) -> None:
    fs = storage.fs
    fs.invalidate_cache()  # s3fs lists from its cache: the workers wrote these files behind its back
    with contextlib.suppress(FileNotFoundError):
        fs.rm(_scratch(storage, dataset, run_id), recursive=True)


def _clean_on_ray(storage: ObjectStore, dataset: str, recipe: Recipe, plan: "Plan", ray_name: str,
                  resources: RayStageResources, run_id: str, log: Callable[[str], None]
                  ) -> tuple[RayParts, RayParts, RayParts, list[StepStats]]:
    """The recipe on the Ray cluster: workers read `collected` (new documents only on an incremental run,
    deduplicated against the signature index), write kept rows, drops and index rows as Parquet parts (into the
    tables' folders on a first run, to a scratch folder to merge from otherwise). `resources`: the spec's
    `cleaning.ray` (CPUs and memory per map task, rows per batch, dedup shard actors)."""
    import ray

    options = tables.delta_options(storage)
    kept_schema, drops_schema = plan.schemas()

    def folder(stage: str) -> str:
        return _scratch(storage, dataset, run_id, stage) if plan.incremental else tables.table_uri(storage, dataset,
                                                                                                    stage)
    outputs = Outputs(
        kept=Destination(folder("cleaned"), kept_schema, (("recipe_hash", recipe.hash),), options),
        drops=Destination(folder("cleaning_drops"), drops_schema, (), options),
        index=Destination(tables.table_uri(storage, dataset, INDEX_STAGE), INDEX_SCHEMA, (), options),
        identity_columns=tuple(IDENTITY))
    try:
        source = Source.of(plan.collected.uri, plan.collected.version, plan.collected.storage_options)
        index = Source.of(plan.index.uri, plan.index.version, plan.index.storage_options) if plan.index else None
        run = run_ray_tables(recipe, source, outputs, new_identities=plan.new if plan.incremental else None,
                             index=index, current=plan.current, resources=resources, log=log)
    except (ray.exceptions.RayError, ConnectionError, TimeoutError) as error:
        raise RayCleaningError(f"Cleaning on the {ray_name} failed: {type(error).__name__}: {error}. No table was "
                               "changed (they stay at their last version); re-run when the cluster is back.") from error
    return (RayParts(run.kept, options), RayParts(run.drops, options), RayParts(run.index, options), run.stats)


class RayCleaningError(RuntimeError):
    """The Ray cluster failed or vanished during cleaning; nothing was committed."""


def _statistics(recipe: Recipe, kept: ParquetSink, drops: ParquetSink) -> dict:
    """Each filter statistic of this run's documents (kept and dropped, a bounded sample): a histogram with the
    recipe's bounds drawn on it and a quantile table, to re-tune thresholds by."""
    if stats_type(recipe.operators) is None:
        return {}
    columns = (pa.Table.from_batches([batch]).select([STATS]) for sink in (kept, drops)
               for batch in (sink.batches([STATS]) if isinstance(sink, RayParts) else sink.batches())
               if STATS in batch.schema.names)
    sample = list(sample_batches(columns, STATS_SAMPLE))
    summaries = summarize(recipe, pa.concat_tables(sample)) if sample else []
    if not summaries:
        return {}
    plots = "\n\n".join(markdown_image(s.png, s.name) for s in summaries)
    return {"statistics": dg.MetadataValue.md(quantile_table(summaries)),
            "statistics_plots": dg.MetadataValue.md(plots)}


def _same_recipe(previous: TableRef, recipe: Recipe) -> bool:
    if "recipe_hash" not in previous.schema.names:
        return False
    # Any other recipe's row means a fresh run; batches, so a million-row table is not read at once.
    other = pds.field("recipe_hash") != recipe.hash
    return not any(batch.num_rows for batch in previous.batches(columns=["recipe_hash"], filter=other))


def _as_table(batch: pa.RecordBatch) -> pa.Table:
    return pa.Table.from_batches([batch])


def _drops_rows(batch: pa.RecordBatch) -> pa.Table:
    table = pa.Table.from_batches([batch])
    columns = {name: table.column(name).cast(pa.string()) if name in table.column_names
               else pa.nulls(table.num_rows, pa.string()) for name in DROPS_COLUMNS}
    if STATS in table.column_names:
        columns[STATS] = table.column(STATS)
    return pa.table(columns)


def _drops_by_operator(drops: TableRef) -> str:
    # Counted batch by batch: a dedup step can drop a large share of the corpus.
    counts = Counter()
    for batch in drops.batches(columns=["operator"]):
        counts.update(batch.column("operator").to_pylist())
    if not counts:
        return "_nothing dropped_"
    rows = [f"| `{o}` | {n} |" for o, n in counts.most_common()]
    return "\n".join(["| operator | dropped |", "|---|---|", *rows])


def _cumulative(context, asset_key: dg.AssetKey, stats: list[StepStats], incremental: bool) -> list[StepStats]:
    """The whole dataset's per-operator figures: the last materialization's, plus this run's work."""
    if not incremental:
        return stats
    event = context.instance.get_latest_materialization_event(asset_key)
    previous = event.asset_materialization.metadata.get("cumulative_stats_json") if event else None
    if previous is None or len(previous.value) != len(stats):
        return stats
    total = [StepStats(**{**entry, "examples": []}) for entry in previous.value]
    for before, now in zip(total, stats, strict=True):
        before.add(StepStats(**{**asdict(now), "examples": []}))
    return total


def _metadata(recipe: Recipe, plan: Plan, stats: list[StepStats], cumulative: list[StepStats], kept: int,
              dropped: int) -> dict:
    whole = "" if cumulative is stats else "\n\n**Whole dataset** (all runs)\n\n" + stats_table(cumulative)
    return {
        "recipe_hash": dg.MetadataValue.text(recipe.hash),
        "collected": dg.MetadataValue.int(plan.collected_count),
        "processed": dg.MetadataValue.int(plan.new_count),
        "reused": dg.MetadataValue.int(plan.reused),
        "removed": dg.MetadataValue.int(plan.removed_count),
        "kept_this_run": dg.MetadataValue.int(kept),
        "dropped_this_run": dg.MetadataValue.int(dropped),
        "operator_stats": dg.MetadataValue.md("**This run**\n\n" + stats_table(stats) + whole),
        "examples": dg.MetadataValue.md(examples_markdown(stats)),
        "operator_stats_json": dg.MetadataValue.json(json.loads(json.dumps([asdict(s) for s in stats]))),
        "cumulative_stats_json": dg.MetadataValue.json(
            json.loads(json.dumps([{**asdict(s), "examples": []} for s in cumulative]))),
    }
