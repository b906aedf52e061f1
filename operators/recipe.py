"""Recipes: an ordered list of operators, loaded from YAML and run over a table of documents.

A recipe is a Data-Juicer style `process:` list (`[{operator_name: {params}}]`), read from a recipe file or a
dataset spec's cleaning section. Running it keeps every input accounted for: each document is either kept or
dropped by exactly one step with a reason, and a document that makes an operator raise is dropped with the
error instead of stopping the run.

`run_local` and `run_ray` share the per-batch step
(`apply_steps`) and the dedup decisions, so they produce identical output on the same input.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from operators.base import (
    DEFAULT_TEXT_KEY,
    Deduplicator,
    Filter,
    Mapper,
    Operator,
    RecordFilter,
    RecordMapper,
    Selector,
    SplitMapper,
)
from operators.dedup.buckets import BucketDeduplicator, bucket_edges, duplicate_map
from operators.dedup.lines import DocumentLineDeduplicator
from operators.registry import OperatorConfigError, build_operator

RECIPE_FORMAT = 1  # bump when the runner's semantics change: it is part of the recipe hash
ROW, DROP_STEP, DROP_REASON = "__row", "__drop_step", "__drop_reason"
STATS = "stats"  # per-document filter statistics, one struct field per statistic (Data-Juicer's __dj__stats__)
ALIVE = -1
EXAMPLES_PER_STEP = 3
EXAMPLE_CHARS = 300
BATCH_ROWS = 2000
SPLIT_BITS = 20  # a piece's row id: its document's row id << SPLIT_BITS | its position (split_rows)


class RecipeError(ValueError):
    """A recipe file or section that cannot be used (before any data is read)."""


@dataclass
class Recipe:
    process: list[dict[str, dict[str, Any]]]
    text_key: str
    operators: list[Operator]

    @classmethod
    def from_process(cls, process: Sequence[dict[str, Any]], text_key: str = DEFAULT_TEXT_KEY) -> Recipe:
        """Validate every step now, so a bad configuration fails before any data is read."""
        steps, operators = [], []
        for index, step in enumerate(process):
            if isinstance(step, str):
                step = {step: {}}
            if not isinstance(step, dict) or len(step) != 1:
                raise RecipeError(f"process[{index}] must be {{operator_name: {{params}}}}, got {step!r}")
            (name, params), = step.items()
            try:
                operator = build_operator(name, params or {}, text_key=text_key)
            except OperatorConfigError as error:
                raise RecipeError(f"process[{index}]: {error}") from error
            steps.append({name: operator.params.model_dump(mode="json")})
            operators.append(operator)
        if not operators:
            raise RecipeError("the recipe has no operators (empty `process:` list)")
        return cls(steps, text_key, operators)

    @classmethod
    def load(cls, path: Path, text_key: str | None = None) -> Recipe:
        """A Data-Juicer style recipe file: `process:` list, optional `text_keys` (a name or a list)."""
        raw = read_recipe_file(path)
        keys = raw.get("text_keys", DEFAULT_TEXT_KEY)
        file_key = keys[0] if isinstance(keys, list) and keys else keys
        try:
            return cls.from_process(raw["process"], text_key or file_key)
        except RecipeError as error:
            raise RecipeError(f"{path}: {error}") from error

    @property
    def hash(self) -> str:
        """Changes with any operator, parameter (defaults included), the text key or the runner's semantics."""
        canonical = json.dumps([RECIPE_FORMAT, self.text_key, self.process], sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def names(self) -> list[str]:
        return [next(iter(step)) for step in self.process]



def read_recipe_file(path: Path) -> dict[str, Any]:
    """A recipe or Data-Juicer config file's mapping, which must have a `process:` list."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise RecipeError(f"{path}: cannot be read as YAML: {error}") from error
    if not isinstance(raw, dict) or not isinstance(raw.get("process"), list):
        raise RecipeError(f"{path}: must be a mapping with a `process:` list of operators")
    return raw


@dataclass
class StepStats:
    step: int
    operator: str
    kind: str
    docs_in: int = 0
    docs_out: int = 0
    changed: int = 0
    dropped: int = 0
    errors: int = 0
    seconds: float = 0.0
    examples: list[dict[str, str]] = field(default_factory=list)
    added: int = 0  # records a splitting mapper made beyond one per document: docs_out = in - dropped + added

    def add(self, other: StepStats) -> None:
        for name in ("docs_in", "docs_out", "changed", "dropped", "errors", "seconds", "added"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.examples = (self.examples + other.examples)[:EXAMPLES_PER_STEP]


@dataclass
class RecipeResult:
    kept: pa.Table  # input columns, in input order
    drops: pa.Table  # input columns + operator, reason (text as the dropping operator saw it)
    stats: list[StepStats]
    recipe_hash: str

    def stats_json(self) -> list[dict[str, Any]]:
        return [asdict(s) for s in self.stats]


def _short(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def change_example(before: str, after: str) -> dict[str, str]:
    """Before/after cut around the first change, so the removed e-mail or link is in view."""
    start = next((i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b), min(len(before),
                                                                                               len(after)))
    start = max(0, start - EXAMPLE_CHARS // 3)

    def window(text: str) -> str:
        cut = text[start: start + EXAMPLE_CHARS]
        return ("…" if start else "") + cut + ("…" if start + EXAMPLE_CHARS < len(text) else "")
    return {"before": window(before), "after": window(after)}


def _error_reason(error: BaseException) -> str:
    return f"error: {type(error).__name__}: {error}"[:500]


def _per_record(function: Callable[[str], Any], texts: Sequence[str]) -> list[tuple[Any, str | None]]:
    """Run record by record, so one failing record is set aside with its error and the rest go on."""
    results = []
    for text in texts:
        try:
            results.append((function(text), None))
        except Exception as error:  # noqa: BLE001 - any operator failure is the record's, not the run's
            results.append((None, _error_reason(error)))
    return results


def _batch_or_per_record(batch_fn, record_fn, texts):
    try:
        return [(value, None) for value in batch_fn(texts)]
    except Exception:  # noqa: BLE001 - find the failing record(s) one by one
        return _per_record(record_fn, texts)


def stats_type(operators: Sequence[Operator]) -> pa.StructType | None:
    """The `stats` column's type for a recipe: one field per statistic its filters declare, None if no filter.

    Fixed before any data is read, so every batch (and the kept and dropped tables) has the same schema.
    """
    fields: dict[str, pa.DataType] = {}
    for op in operators:
        if isinstance(op, Filter):
            for name, kind in op.stat_types().items():
                fields.setdefault(name, pa.string() if kind is str else pa.float64())
    return pa.struct(list(fields.items())) if fields else None


def with_bookkeeping(table: pa.Table, stats: pa.StructType | None = None) -> pa.Table:
    """Add the row id and drop columns the runner tracks every document with, and the empty `stats` column.

    An input `stats` column (e.g. from an earlier run) is replaced: the recipe's filters compute it anew.
    """
    n = table.num_rows
    if STATS in table.column_names:
        table = table.drop_columns([STATS])
    table = table.append_column(ROW, pa.array(np.arange(n, dtype=np.int64)))
    table = table.append_column(DROP_STEP, pa.array(np.full(n, ALIVE, dtype=np.int32)))
    table = table.append_column(DROP_REASON, pa.nulls(n, pa.string()))
    return table.append_column(STATS, pa.nulls(n, stats)) if stats is not None else table


class _Records:
    """The batch's rows as dicts, built once per batch, for operators that read fields other than the text."""

    def __init__(self, batch: pa.Table):
        self.batch = batch
        self.rows: list[dict[str, Any]] | None = None
        self.changed: set[str] = set()

    def get(self, i: int, texts: list[str], text_key: str) -> dict[str, Any]:
        if self.rows is None:
            data = self.batch.drop_columns([c for c in (ROW, DROP_STEP, DROP_REASON, STATS)
                                            if c in self.batch.column_names])
            self.rows = data.to_pylist()
        return {**self.rows[i], text_key: texts[i]}

    def update(self, i: int, fields: dict[str, Any], text_key: str) -> None:
        """Store a record mapper's fields; a field the table lacks or a value of the wrong type raises."""
        for name, value in fields.items():
            if name == text_key:
                continue
            if name not in self.rows[i]:
                raise ValueError(f"field {name!r} is not a column of the table (columns are fixed; add it upstream)")
            pa.scalar(value, self.batch.schema.field(name).type)  # raises on a value of another type
        for name, value in fields.items():
            if name != text_key and self.rows[i][name] != value:
                self.rows[i][name] = value
                self.changed.add(name)

    def write(self, batch: pa.Table) -> pa.Table:
        for name in sorted(self.changed):
            column = pa.array([row[name] for row in self.rows], batch.schema.field(name).type)
            batch = batch.set_column(batch.schema.get_field_index(name), name, column)
        return batch


def _stats_column(batch: pa.Table, doc_stats: list[dict | None]) -> pa.Array:
    """The struct column of the batch's stats, with every declared field (null where not computed)."""
    kind = batch.schema.field(STATS).type
    rows = []
    for values in doc_stats:
        if values is None:
            rows.append(None)
            continue
        row = {}
        for stat in kind:
            value = values.get(stat.name)
            row[stat.name] = None if value is None else (str(value) if pa.types.is_string(stat.type)
                                                         else float(value))
        rows.append(row)
    return pa.array(rows, kind)


def apply_steps(batch: pa.Table, steps: Sequence[tuple[int, Operator]], text_key: str
                ) -> tuple[pa.Table, list[StepStats]]:
    """Apply consecutive mappers and filters to one batch; dropped documents stay, marked with step and reason.

    Filters' statistics go into the batch's `stats` column when it has one (see `with_bookkeeping`), for the
    kept and the dropped documents alike.
    """
    texts = batch.column(text_key).to_pylist()
    drop_step = batch.column(DROP_STEP).to_numpy(zero_copy_only=False).copy()
    reasons = batch.column(DROP_REASON).to_pylist()
    keep_stats = STATS in batch.column_names
    doc_stats = batch.column(STATS).to_pylist() if keep_stats else []
    records = _Records(batch)
    report = []
    for index, op in steps:
        alive = np.flatnonzero(drop_step == ALIVE)
        stats = StepStats(index, op.name, op.kind, docs_in=int(alive.size))
        started = time.perf_counter()
        current = [texts[i] for i in alive]
        if isinstance(op, RecordMapper):
            outputs = _batch_or_per_record(
                op.process_records, op.process_record,
                [records.get(i, texts, text_key) for i in alive])
            for i, (fields, error) in zip(alive, outputs, strict=True):
                if error is None:
                    try:
                        records.update(i, fields, text_key)
                    except Exception as update_error:  # noqa: BLE001 - the record's, not the run's
                        error = _error_reason(update_error)
                if error is not None:
                    drop_step[i], reasons[i], stats.errors = index, error, stats.errors + 1
                    continue
                new = fields.get(text_key, texts[i])
                if not isinstance(new, str):
                    drop_step[i], reasons[i] = index, f"error: {text_key!r} is a {type(new).__name__}, not text"
                    stats.errors += 1
                elif new != texts[i]:
                    stats.changed += 1
                    if len(stats.examples) < EXAMPLES_PER_STEP:
                        stats.examples.append(change_example(texts[i], new))
                    texts[i] = new
        elif isinstance(op, Mapper):
            outputs = _batch_or_per_record(op.process_batch, op.process_text, current)
            for i, (new, error) in zip(alive, outputs, strict=True):
                if error is not None:
                    drop_step[i], reasons[i], stats.errors = index, error, stats.errors + 1
                elif new != texts[i]:
                    stats.changed += 1
                    if len(stats.examples) < EXAMPLES_PER_STEP:
                        stats.examples.append(change_example(texts[i], new))
                    texts[i] = new
        elif isinstance(op, Filter):
            if isinstance(op, RecordFilter):
                outputs = _per_record(op.compute_stats_record, [records.get(i, texts, text_key) for i in alive])
            else:
                outputs = _batch_or_per_record(op.compute_stats_batch, op.compute_stats, current)
            for i, (values, error) in zip(alive, outputs, strict=True):
                if error is None:
                    if keep_stats:
                        doc_stats[i] = {**(doc_stats[i] or {}), **values}
                    try:
                        kept, reason = op.keep(values)
                    except Exception as keep_error:  # noqa: BLE001
                        kept, error = False, _error_reason(keep_error)
                if error is not None:
                    drop_step[i], reasons[i], stats.errors = index, error, stats.errors + 1
                elif not kept:
                    drop_step[i], reasons[i] = index, reason
                    if len(stats.examples) < EXAMPLES_PER_STEP:
                        stats.examples.append({"dropped": _short(texts[i]), "reason": reason})
        else:
            raise TypeError(f"{op.name} is a {op.kind}; apply_steps handles mappers and filters only")
        stats.seconds = time.perf_counter() - started
        stats.dropped = int(((drop_step == index)).sum())
        stats.docs_out = stats.docs_in - stats.dropped
        report.append(stats)
    batch = records.write(batch)
    batch = batch.set_column(batch.schema.get_field_index(text_key), text_key, pa.array(texts, pa.large_string()))
    batch = batch.set_column(batch.schema.get_field_index(DROP_STEP), DROP_STEP, pa.array(drop_step, pa.int32()))
    batch = batch.set_column(batch.schema.get_field_index(DROP_REASON), DROP_REASON, pa.array(reasons, pa.string()))
    if keep_stats:
        batch = batch.set_column(batch.schema.get_field_index(STATS), STATS, _stats_column(batch, doc_stats))
    return batch, report


def split_rows(batch: pa.Table, index: int, op: SplitMapper, text_key: str) -> tuple[pa.Table, StepStats]:
    """Replace each live document by the records its pieces make (other columns copied); a document that gives no
    piece is dropped with the reason. Rows already dropped pass through.

    Row ids become `document row << SPLIT_BITS | piece position` for every row, so the output keeps input order,
    ids stay unique without any coordination between batches or workers, and `row >> SPLIT_BITS` finds the
    document a piece came from (the signature index of an earlier dedup step needs it)."""
    rows = batch.column(ROW).to_numpy()
    if rows.size and rows.max() >= 1 << (62 - SPLIT_BITS):
        raise RecipeError(f"{op.name}: row ids would overflow (each splitting step takes {SPLIT_BITS} bits: a "
                          "second one fits up to 4 million documents)")
    drop_step = batch.column(DROP_STEP).to_numpy(zero_copy_only=False).copy()
    reasons = batch.column(DROP_REASON).to_pylist()
    texts = batch.column(text_key).to_pylist()
    alive = np.flatnonzero(drop_step == ALIVE)
    stats = StepStats(index, op.name, op.kind, docs_in=int(alive.size))
    started = time.perf_counter()
    outputs = _batch_or_per_record(op.split_batch, op.split_text, [texts[i] for i in alive])
    pieces: list[list[str] | None] = [None] * len(texts)  # None: the row passes as it is
    for i, (parts, error) in zip(alive, outputs, strict=True):
        if error is None and len(parts) >= 1 << SPLIT_BITS:
            error = f"error: {len(parts)} pieces, more than {1 << SPLIT_BITS} per document"
        if error is not None:
            drop_step[i], reasons[i], stats.errors = index, error, stats.errors + 1
        elif not parts:
            drop_step[i], reasons[i] = index, "no text left to split"
        else:
            pieces[i] = parts
            stats.added += len(parts) - 1
            if parts != [texts[i]]:
                stats.changed += 1
                if len(stats.examples) < EXAMPLES_PER_STEP:
                    shown = " ⏎ ".join(f"[{n + 1}/{len(parts)}] {part}" for n, part in enumerate(parts[:3]))
                    stats.examples.append({"before": _short(texts[i]), "after": _short(shown)})
    counts = np.array([1 if p is None else len(p) for p in pieces], dtype=np.int64)
    source = np.repeat(np.arange(len(texts)), counts)
    position = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    out = batch.take(pa.array(source, pa.int64()))
    new_texts = [piece for i, p in enumerate(pieces) for piece in ([texts[i]] if p is None else p)]
    out = out.set_column(out.schema.get_field_index(text_key), text_key, pa.array(new_texts, pa.large_string()))
    out = out.set_column(out.schema.get_field_index(ROW), ROW, pa.array((rows[source] << SPLIT_BITS) | position))
    out = out.set_column(out.schema.get_field_index(DROP_STEP), DROP_STEP, pa.array(drop_step[source], pa.int32()))
    out = out.set_column(out.schema.get_field_index(DROP_REASON), DROP_REASON,
                         pa.array([reasons[i] for i in source], pa.string()))
    stats.dropped = int((drop_step == index).sum())
    stats.docs_out = stats.docs_in - stats.dropped + stats.added
    stats.seconds = time.perf_counter() - started
    return out, stats


def decide_selection(op: Selector, table: pa.Table, text_key: str) -> DedupDecision:
    """A selector's drops over the live rows of `table` (ROW, DROP_STEP and the selector's fields, any order).

    Shared by both executors: only these few columns of the whole dataset need to be in one place.
    """
    live = table.filter(pc.equal(table.column(DROP_STEP), ALIVE)).sort_by(ROW)
    missing = [name for name in op.fields() if name not in live.column_names]
    if missing:
        columns = ", ".join(live.column_names)
        raise RecipeError(f"{op.name}: the input has no column {missing[0]!r} (columns: {columns})")
    records = live.select(op.fields()).to_pylist() if op.fields() else [{}] * live.num_rows
    rows = live.column(ROW).to_pylist()
    return DedupDecision({rows[i]: reason for i, reason in op.select(records).items()})


ALONE = (Deduplicator, Selector, SplitMapper)  # steps that run as a segment of their own


def segments(operators: Sequence[Operator]) -> list[list[tuple[int, Operator]]]:
    """Split the recipe into runs of per-document steps and single steps that see the dataset (dedup, selectors)
    or change the number of rows (splitting mappers)."""
    parts: list[list[tuple[int, Operator]]] = []
    for index, op in enumerate(operators):
        if isinstance(op, ALONE) or not parts or isinstance(parts[-1][0][1], ALONE):
            parts.append([(index, op)])
        else:
            parts[-1].append((index, op))
    return parts


def fingerprints_of(op: Deduplicator, texts: Sequence[str]) -> tuple[list | np.ndarray, list[str | None]]:
    """Fingerprints per text (batched), and the error of each text whose fingerprint failed."""
    batch_fn = getattr(op, "fingerprint_batch", None) or (lambda ts: [op.fingerprint(t) for t in ts])
    try:
        return batch_fn(texts), [None] * len(texts)
    except Exception:  # noqa: BLE001 - locate the failing records
        results = _per_record(lambda t: batch_fn([t])[0], texts)
        good = [value for value, error in results if error is None]
        errors = [error for _, error in results]
        placeholder = np.asarray(good[0]) * 0 if good else np.zeros(1, np.uint64)
        values = [value if error is None else placeholder for value, error in results]
        return (np.stack(values) if isinstance(op, BucketDeduplicator) else values), errors


@dataclass
class DedupDecision:
    """What a dedup step decided: dropped rows with reasons, and rewritten texts (line dedup)."""

    drops: dict[int, str] = field(default_factory=dict)
    rewrites: dict[int, str] = field(default_factory=dict)


def decide_bucket_dedup(op: BucketDeduplicator, fps: np.ndarray, rows: np.ndarray, first: np.ndarray,
                        other: np.ndarray, doc_ids: dict[int, str], protected: set[int]) -> DedupDecision:
    """Verify candidate pairs (row ids) and resolve components; shared by both executors."""
    position = {int(r): i for i, r in enumerate(rows)}
    first_pos = np.array([position[int(r)] for r in first], dtype=np.int64)
    other_pos = np.array([position[int(r)] for r in other], dtype=np.int64)
    verified = op.verify(fps[first_pos], fps[other_pos]) if first.size else np.zeros(0, bool)
    duplicates = duplicate_map(first[verified], other[verified], protected)
    decision = DedupDecision()
    for row, kept in duplicates.items():
        why = op.reason(fps[position[kept]], fps[position[row]])
        decision.drops[row] = f"{why} of {doc_ids.get(kept) or f'row #{kept}'}"
    return decision


def decide_line_dedup(op: DocumentLineDeduplicator, texts: Sequence[str], rows: np.ndarray,
                      owners: dict[int, int], protected: set[int], failed: dict[int, str]) -> DedupDecision:
    decision = DedupDecision()
    for text, row in zip(texts, rows.tolist(), strict=True):
        if row in protected or row in failed:
            continue
        new = op.remove_seen(text, row, owners)
        if not new.strip():
            decision.drops[row] = "every line repeats earlier documents"
        elif new != text:
            decision.rewrites[row] = new
    return decision


def document_names(table: pa.Table) -> list[str | None]:
    """How a duplicate's reason names the kept document: its source, else its id."""
    if "source_uri" in table.column_names:
        return table.column("source_uri").to_pylist()
    if "doc_id" in table.column_names:
        return [None if d is None else f"doc {d}" for d in table.column("doc_id").to_pylist()]
    return [None] * table.num_rows


def apply_dedup_decision(batch: pa.Table, index: int, text_key: str, decision: DedupDecision,
                         failed: dict[int, str]) -> tuple[pa.Table, StepStats, list[dict[str, str]]]:
    """Mark the decided drops and rewrites on a batch (runs on the driver or on Ray workers)."""
    rows = batch.column(ROW).to_pylist()
    drop_step = batch.column(DROP_STEP).to_numpy(zero_copy_only=False).copy()
    reasons = batch.column(DROP_REASON).to_pylist()
    texts = batch.column(text_key).to_pylist()
    stats = StepStats(index, "", "deduplicator", docs_in=int((drop_step == ALIVE).sum()))
    examples = []
    for i, row in enumerate(rows):
        if drop_step[i] != ALIVE:
            continue
        if row in failed:
            drop_step[i], reasons[i] = index, failed[row]
            stats.errors += 1
        elif row in decision.drops:
            drop_step[i], reasons[i] = index, decision.drops[row]
            examples.append({"dropped": _short(texts[i]), "reason": decision.drops[row]})
        elif row in decision.rewrites:
            examples.append(change_example(texts[i], decision.rewrites[row]))
            texts[i] = decision.rewrites[row]
            stats.changed += 1
    stats.dropped = int((drop_step == index).sum())
    stats.docs_out = stats.docs_in - stats.dropped
    stats.examples = examples[:EXAMPLES_PER_STEP]
    batch = batch.set_column(batch.schema.get_field_index(text_key), text_key, pa.array(texts, pa.large_string()))
    batch = batch.set_column(batch.schema.get_field_index(DROP_STEP), DROP_STEP, pa.array(drop_step, pa.int32()))
    batch = batch.set_column(batch.schema.get_field_index(DROP_REASON), DROP_REASON, pa.array(reasons, pa.string()))
    return batch, stats, examples


def _apply_segment(args):
    batch, steps, text_key = args
    return apply_steps(batch, steps, text_key)


def _batches(table: pa.Table, rows: int) -> list[pa.Table]:
    return [table.slice(start, rows) for start in range(0, table.num_rows, rows)] or [table]


def run_local(recipe: Recipe, table: pa.Table, num_proc: int = 1, log: Callable[[str], None] | None = None
              ) -> RecipeResult:
    """Run the recipe on an in-memory table (the CLI, tests) with the streaming runner, `num_proc` worker processes."""
    from operators.stream import ParquetSink, run_stream

    if recipe.text_key not in table.column_names:
        raise RecipeError(f"input has no text column {recipe.text_key!r} (columns: {', '.join(table.column_names)})")
    with tempfile.TemporaryDirectory(prefix="datamate-recipe-") as work:
        kept, drops = ParquetSink(Path(work) / "kept.parquet"), ParquetSink(Path(work) / "drops.parquet")
        result = run_stream(recipe, _batches(table, BATCH_ROWS), Path(work), kept, drops, num_proc=num_proc, log=log)
        kept.close()
        drops.close()
        schema = _normalize_text_column(table.slice(0, 0), recipe.text_key).schema
        if stats_type(recipe.operators) is not None:  # an empty result has the `stats` column too
            schema = schema.remove(schema.get_field_index(STATS)) if STATS in schema.names else schema
            schema = schema.append(pa.field(STATS, stats_type(recipe.operators)))
        drop_schema = schema.append(pa.field("operator", pa.string())).append(pa.field("reason", pa.string()))
        kept_table = pq.read_table(kept.path) if kept.rows else schema.empty_table()
        drops_table = pq.read_table(drops.path) if drops.rows else drop_schema.empty_table()
    return RecipeResult(kept_table, drops_table, result.stats, recipe.hash)


def _normalize_text_column(table: pa.Table, text_key: str) -> pa.Table:
    """Texts as large_string; a null text becomes '' (filters then drop it with a reason)."""
    column = pc.fill_null(table.column(text_key).cast(pa.large_string()), "")
    return table.set_column(table.schema.get_field_index(text_key), text_key, column)


def finish(recipe: Recipe, work: pa.Table, stats: list[StepStats]) -> RecipeResult:
    """Split the tracked table into kept and dropped documents, in input order."""
    for s, name in zip(stats, recipe.names, strict=True):
        s.operator = name
    work = work.sort_by(ROW)
    drop_step = work.column(DROP_STEP)
    kept = work.filter(pc.equal(drop_step, ALIVE)).drop_columns([ROW, DROP_STEP, DROP_REASON])
    dropped = work.filter(pc.not_equal(drop_step, ALIVE))
    names = np.array(recipe.names, dtype=object)
    operator = pa.array(names[dropped.column(DROP_STEP).to_numpy()].tolist() if dropped.num_rows else [],
                        pa.string())
    drops = dropped.drop_columns([ROW, DROP_STEP, DROP_REASON])
    drops = drops.append_column("operator", operator).append_column("reason", dropped.column(DROP_REASON))
    return RecipeResult(kept, drops, stats, recipe.hash)


# --- Ray executor -------------------------------------------------------------------------------------------
def _ray_segment(batch: pa.Table, part, text_key: str) -> pa.Table:
    """map_batches body: apply the steps, carry the batch's step stats in a JSON column of its first row."""
    batch, report = apply_steps(batch, part, text_key)
    return _attach_report(batch, [asdict(s) for s in report])


def _ray_split(batch: pa.Table, index: int, op: SplitMapper, text_key: str) -> pa.Table:
    batch, report = split_rows(batch, index, op, text_key)
    return _attach_report(batch, [asdict(report)])


def _attach_report(batch: pa.Table, report: list[dict]) -> pa.Table:
    column = [json.dumps(report)] + [None] * (batch.num_rows - 1) if batch.num_rows else []
    return batch.append_column("__report", pa.array(column, pa.string()))


def _bucket_keys_rows(batch: pa.Table, op: BucketDeduplicator, text_key: str) -> pa.Table:
    """One row per (bucket key, row) of the live documents; failing records get no key (set aside later)."""
    live = batch.filter(pc.equal(batch.column(DROP_STEP), ALIVE))
    fps, errors = fingerprints_of(op, live.column(text_key).to_pylist())
    ok = np.array([e is None for e in errors], dtype=bool)
    rows = live.column(ROW).to_numpy()[ok]
    keys = op.bucket_keys(fps[ok]) if ok.any() else np.zeros((0, 1), np.uint64)
    salted = keys ^ (np.arange(keys.shape[1], dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))[None, :]
    return pa.table({"key": salted.ravel(), ROW: np.repeat(rows, keys.shape[1])})


def _bucket_pairs(block: pa.Table) -> pa.Table:
    """Per hash partition (every row of a key is in the same block): (smallest row, other row) per bucket."""
    first, other = bucket_edges(block.column("key").to_numpy(), block.column(ROW).to_numpy())
    return pa.table({"first": first, "other": other})


def _fingerprint_rows(batch: pa.Table, op: Deduplicator, text_key: str, wanted: set[int]) -> pa.Table:
    """Fingerprints (as bytes) of the live rows in `wanted`, and the rows whose fingerprint raised."""
    live = batch.filter(pc.equal(batch.column(DROP_STEP), ALIVE))
    fps, errors = fingerprints_of(op, live.column(text_key).to_pylist())
    chosen = [i for i, (r, e) in enumerate(zip(live.column(ROW).to_pylist(), errors, strict=True)) if r in wanted or e]
    # typed indices: an empty list would be a null-typed array, which `take` refuses (a block with no candidate)
    live = live.take(pa.array(chosen, pa.int64()))
    fps, errors = [fps[i] for i in chosen], [errors[i] for i in chosen]
    return pa.table({
        ROW: live.column(ROW),
        "fp": pa.array([np.asarray(f).tobytes() for f in fps], pa.binary()),
        "error": pa.array(errors, pa.string()),
        "name": pa.array(document_names(live), pa.string()),
    })


def _line_owner_rows(batch: pa.Table, op: DocumentLineDeduplicator, text_key: str) -> pa.Table:
    live = batch.filter(pc.equal(batch.column(DROP_STEP), ALIVE))
    fps = [op.fingerprint(t) for t in live.column(text_key).to_pylist()]
    rows = live.column(ROW).to_numpy()
    counts = np.array([len(f) for f in fps], dtype=np.int64)
    hashes = np.concatenate(fps) if fps else np.zeros(0, np.uint64)
    return pa.table({"unit": hashes, ROW: np.repeat(rows, counts)})


def _repeated_unit_owners(block: pa.Table) -> pa.Table:
    """Per hash partition: units found in several documents -> their first owner row."""
    owners = DocumentLineDeduplicator.first_owners([block.column("unit").to_numpy()], block.column(ROW).to_numpy(),
                                                   rows_per_unit=True)
    return pa.table({"unit": pa.array(list(owners), pa.uint64()), ROW: pa.array(list(owners.values()), pa.int64())})


def _ray_apply_decision(batch: pa.Table, index: int, text_key: str, decision: DedupDecision,
                        failed: dict[int, str]) -> pa.Table:
    batch, stats, _ = apply_dedup_decision(batch, index, text_key, decision, failed)
    return _attach_report(batch, [asdict(stats)])


def _ray_line_decision(batch: pa.Table, index: int, op: DocumentLineDeduplicator, text_key: str,
                       owners: dict[int, int]) -> pa.Table:
    live = batch.filter(pc.equal(batch.column(DROP_STEP), ALIVE))
    decision = decide_line_dedup(op, live.column(text_key).to_pylist(), live.column(ROW).to_numpy(), owners,
                                 set(), {})
    return _ray_apply_decision(batch, index, text_key, decision, {})


def _collect_reports(ds, stats: list[StepStats]) -> Any:
    """Materialize, fold the per-batch reports into `stats`, and drop the report column."""
    ds = ds.materialize()
    for batch in ds.select_columns(["__report"]).iter_batches(batch_format="pyarrow"):
        for value in batch.column("__report").drop_null().to_pylist():
            for entry in json.loads(value):
                stats[entry["step"]].add(StepStats(**entry))
    return ds.drop_columns(["__report"]).materialize()


def run_ray(recipe: Recipe, table: pa.Table, num_blocks: int | None = None,
            log: Callable[[str], None] | None = None) -> RecipeResult:
    """Run the recipe with ray.data on the connected Ray cluster (call `ray.init` first).

    Mappers and filters run in map_batches; a dedup step groups bucket keys with a distributed groupby and
    only the candidate pairs (and the fingerprints of documents in them) reach the driver, which resolves
    components with the same code as the local executor. Line dedup broadcasts only units seen in several
    documents. The kept and dropped tables are gathered at the end because the asset returns a table.
    """
    import ray

    log = log or (lambda message: None)
    text_key = recipe.text_key
    if text_key not in table.column_names:
        raise RecipeError(f"input has no text column {text_key!r} (columns: {', '.join(table.column_names)})")
    work = _normalize_text_column(with_bookkeeping(table, stats_type(recipe.operators)), text_key)
    blocks = num_blocks or max(2, int(ray.available_resources().get("CPU", 2)) * 2)
    # one shuffle aggregator actor per block at most: the default spawns many, which dominates small runs
    context = ray.data.DataContext.get_current()
    context.max_hash_shuffle_aggregators = min(context.max_hash_shuffle_aggregators or blocks, blocks)
    ds = ray.data.from_arrow(work).repartition(blocks)
    stats = [StepStats(i, name, op.kind) for i, (name, op) in enumerate(zip(recipe.names, recipe.operators,
                                                                            strict=True))]
    for part in segments(recipe.operators):
        index, op = part[0]
        started = time.perf_counter()
        if isinstance(op, BucketDeduplicator):
            pairs = (ds.map_batches(_bucket_keys_rows, fn_args=(op, text_key), batch_format="pyarrow")
                     .repartition(blocks, keys=["key"])
                     .map_batches(_bucket_pairs, batch_size=None, batch_format="pyarrow"))
            pair_table = pa.concat_tables(ray.get(pairs.to_arrow_refs()) or [pa.table({"first": [], "other": []})])
            first = pair_table.column("first").to_numpy().astype(np.int64)
            other = pair_table.column("other").to_numpy().astype(np.int64)
            # failing records and the documents in candidate pairs are the only fingerprints fetched
            wanted = set(first.tolist()) | set(other.tolist())
            fp_table = pa.concat_tables(ray.get(ds.map_batches(
                _fingerprint_rows, fn_args=(op, text_key, wanted), batch_format="pyarrow").to_arrow_refs()))
            rows = fp_table.column(ROW).to_numpy()
            errors = fp_table.column("error").to_pylist()
            failed = {int(r): e for r, e in zip(rows, errors, strict=True) if e is not None}
            ok = np.array([e is None for e in errors], dtype=bool)
            fps = _fps_from_bytes(op, fp_table.column("fp").to_pylist(), ok)
            unique = np.unique(np.stack([first, other], axis=1), axis=0) if first.size else np.zeros((0, 2), int)
            doc_ids = dict(zip(rows.tolist(), fp_table.column("name").to_pylist(), strict=True))
            decision = decide_bucket_dedup(op, fps, rows[ok], unique[:, 0], unique[:, 1], doc_ids, set())
            ds = _collect_reports(ds.map_batches(_ray_apply_decision, fn_args=(index, text_key, decision, failed),
                                                 batch_format="pyarrow"), stats)
        elif isinstance(op, DocumentLineDeduplicator):
            owners_ds = (ds.map_batches(_line_owner_rows, fn_args=(op, text_key), batch_format="pyarrow")
                         .repartition(blocks, keys=["unit"])
                         .map_batches(_repeated_unit_owners, batch_size=None, batch_format="pyarrow"))
            owners_table = pa.concat_tables(ray.get(owners_ds.to_arrow_refs()))
            units, owner_rows = owners_table.column("unit").to_pylist(), owners_table.column(ROW).to_pylist()
            owners = dict(zip(units, owner_rows, strict=True))
            ds = _collect_reports(ds.map_batches(_ray_line_decision, fn_args=(index, op, text_key, owners),
                                                 batch_format="pyarrow"), stats)
        elif isinstance(op, Deduplicator):
            raise RecipeError(f"{op.name} has no distributed implementation; use executor: local")
        elif isinstance(op, Selector):  # only the row ids and the selector's fields reach the driver
            columns = [ROW, DROP_STEP, *op.fields()]
            decision = decide_selection(op, pa.concat_tables(ray.get(ds.select_columns(columns).to_arrow_refs())),
                                        text_key)
            ds = _collect_reports(ds.map_batches(_ray_apply_decision, fn_args=(index, text_key, decision, {}),
                                                 batch_format="pyarrow"), stats)
        elif isinstance(op, SplitMapper):
            ds = _collect_reports(ds.map_batches(_ray_split, fn_args=(index, op, text_key), batch_format="pyarrow"),
                                  stats)
        else:
            ds = _collect_reports(ds.map_batches(_ray_segment, fn_args=(part, text_key), batch_format="pyarrow"),
                                  stats)
        if isinstance(op, Deduplicator | Selector):
            stats[index].seconds = time.perf_counter() - started
        for i, _ in part:
            log(f"step {i} {recipe.names[i]} (ray): {stats[i].docs_in} in, {stats[i].dropped} dropped, "
                f"{stats[i].changed} changed")
    result = pa.concat_tables(ray.get(ds.to_arrow_refs()), promote_options="permissive")
    return finish(recipe, result, stats)


def _fps_from_bytes(op: BucketDeduplicator, blobs: list[bytes], ok: np.ndarray) -> np.ndarray:
    width_probe = op.fingerprint_batch(["probe text for the fingerprint shape"])
    dtype, width = width_probe.dtype, width_probe.shape[1]
    good = [b for b, k in zip(blobs, ok, strict=True) if k]
    return np.frombuffer(b"".join(good), dtype=dtype).reshape(len(good), width) if good \
        else np.zeros((0, width), dtype)
