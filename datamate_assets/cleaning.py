"""Cleaning stage: `<dataset>/collected` → `<dataset>/cleaned` + `<dataset>/cleaning_drops` with the spec's recipe.

Incremental: documents whose doc_id already went through the same recipe (previous `cleaned` or
`cleaning_drops` in storage with the same recipe_hash) are reused; only new or changed documents run, and they
are deduplicated against the previously kept ones. A recipe change changes the code version and reprocesses all.
"""

import json

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec
from datamate_resources.io_manager import asset_parts
from datamate_resources.ray import DatamateRay
from datamate_resources.storage import ObjectStore
from operators.recipe import Recipe, RecipeResult, StepStats, run_local, run_ray

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


def _previous(storage: ObjectStore, spec: DatasetSpec, stage: str) -> pa.Table | None:
    return storage.read_table(*asset_parts(key(spec, stage)))


def _drops_table(result_drops: pa.Table) -> pa.Table:
    columns = {}
    for name in DROPS_COLUMNS:
        column = result_drops.column(name) if name in result_drops.column_names else None
        columns[name] = (column.cast(pa.string()) if column is not None
                         else pa.nulls(result_drops.num_rows, pa.string()))
    return pa.table(columns)


def build_defs(spec: DatasetSpec) -> dg.Definitions:
    if spec.cleaning is None:
        return dg.Definitions()
    section = spec.cleaning
    # Fails at load time with operator, parameter and reason, before any data is read.
    recipe = Recipe.from_process(section.process, section.text_key)
    def clean(context: dg.AssetExecutionContext, storage: ObjectStore, collected: pa.Table, on_ray: bool):
        new, reused_kept, reused_drops = _split_incremental(storage, spec, recipe, collected)
        context.log.info(f"{new.num_rows} new or changed documents to clean, "
                         f"{reused_kept.num_rows + reused_drops.num_rows} reused (recipe {recipe.hash})")
        reference = reused_kept.drop_columns(["recipe_hash"]) if reused_kept.num_rows else None
        if on_ray and reference is None:
            result = run_ray(recipe, new, log=context.log.info)
        else:
            if on_ray:  # incremental dedup against published docs is implemented in-process
                context.log.info("incremental run: using the local executor for the new documents")
            result = run_local(recipe, new, reference=reference, log=context.log.info)
        cleaned = pa.concat_tables([reused_kept, _with_hash(result.kept, recipe.hash)], promote_options="permissive")
        drops = pa.concat_tables([reused_drops, _drops_table(result.drops)], promote_options="permissive")
        yield dg.Output(cleaned, "cleaned", metadata=_metadata(result, collected, cleaned, drops, new.num_rows))
        yield dg.Output(drops, "cleaning_drops", metadata={
            "by_operator": dg.MetadataValue.md(_drops_by_operator(drops)),
        })

    # Only datasets that run on Ray ask for the Ray resource, so a local run never starts Ray.
    if section.executor == "ray":
        def compute(context: dg.AssetExecutionContext, storage: ObjectStore, ray: DatamateRay, collected: pa.Table):
            yield from clean(context, storage, collected, on_ray=True)
    else:
        def compute(context: dg.AssetExecutionContext, storage: ObjectStore, collected: pa.Table):
            yield from clean(context, storage, collected, on_ray=False)

    cleaning = dg.multi_asset(
        name=f"{spec.name}_cleaning",
        group_name=spec.name,
        ins={"collected": dg.AssetIn(key(spec, "collected"))},
        outs={
            "cleaned": dg.AssetOut(key=key(spec, "cleaned"), code_version=recipe.hash,
                                   description=f"Collected documents after the cleaning recipe {recipe.hash}"),
            "cleaning_drops": dg.AssetOut(key=key(spec, "cleaning_drops"), code_version=recipe.hash,
                                          description="Documents the recipe dropped, with operator and reason"),
        },
    )(compute)
    return dg.Definitions(assets=[cleaning])


def _with_hash(table: pa.Table, recipe_hash: str) -> pa.Table:
    return table.append_column("recipe_hash", pa.array([recipe_hash] * table.num_rows, pa.string()))


def _split_incremental(storage: ObjectStore, spec: DatasetSpec, recipe: Recipe, collected: pa.Table):
    """(documents to run, previously kept rows to reuse, previous drops to reuse) under the same recipe."""
    empty_kept = _with_hash(collected.slice(0, 0), recipe.hash)
    empty_drops = _drops_table(pa.table({name: pa.array([], pa.string()) for name in DROPS_COLUMNS}))
    previous = _previous(storage, spec, "cleaned")
    previous_drops = _previous(storage, spec, "cleaning_drops")
    if previous is None or previous_drops is None or previous.num_rows == 0 and previous_drops.num_rows == 0:
        return collected, empty_kept, empty_drops
    if "recipe_hash" not in previous.column_names or set(previous.column("recipe_hash").to_pylist()) - {recipe.hash}:
        return collected, empty_kept, empty_drops
    # a document is the same when both its text (doc_id) and its source are: identical copies from two
    # sources are two inputs, and one of them is a duplicate
    current = _identity(collected)
    kept = previous.filter(pc.is_in(_identity(previous), current))
    drops = previous_drops.filter(pc.is_in(_identity(previous_drops), current))
    done = pa.concat_arrays([_identity(kept), _identity(drops)])
    new = collected.filter(pc.invert(pc.is_in(current, done)))
    return new, kept, _drops_table(drops)


def _identity(table: pa.Table) -> pa.Array:
    columns = [table.column(name).cast(pa.string()).combine_chunks() for name in ("doc_id", "source_uri")]
    return pc.binary_join_element_wise(*columns, "\x1f")


def _drops_by_operator(drops: pa.Table) -> str:
    if drops.num_rows == 0:
        return "_nothing dropped_"
    counts = drops.group_by("operator").aggregate([("doc_id", "count")]).sort_by([("doc_id_count", "descending")])
    rows = [f"| `{o}` | {n} |" for o, n in zip(counts.column("operator").to_pylist(),
                                                counts.column("doc_id_count").to_pylist(), strict=True)]
    return "\n".join(["| operator | dropped |", "|---|---|", *rows])


def _metadata(result: RecipeResult, collected: pa.Table, cleaned: pa.Table, drops: pa.Table, processed: int):
    return {
        "recipe_hash": dg.MetadataValue.text(result.recipe_hash),
        "collected": dg.MetadataValue.int(collected.num_rows),
        "processed": dg.MetadataValue.int(processed),
        "reused": dg.MetadataValue.int(collected.num_rows - processed),
        "kept": dg.MetadataValue.int(cleaned.num_rows),
        "dropped": dg.MetadataValue.int(drops.num_rows),
        "operator_stats": dg.MetadataValue.md(stats_table(result.stats)),
        "examples": dg.MetadataValue.md(examples_markdown(result.stats)),
        "operator_stats_json": dg.MetadataValue.json(json.loads(json.dumps(result.stats_json()))),
    }
