"""Recipes: an ordered list of operators, loaded from YAML and run over a table of documents.

A recipe is a Data-Juicer style `process:` list (`[{operator_name: {params}}]`), read from a recipe file or a
dataset spec's cleaning section. Running it keeps every input accounted for: each document is either kept or
dropped by exactly one step with a reason, and a document that makes an operator raise is dropped with the
error instead of stopping the run.

The streaming runner (`operators/stream.py`) and the Ray executor (`operators/ray_exec.py`) share the per-batch
steps (`apply_steps`, `split_rows`) and the dedup decisions, so they produce identical output on the same input.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
from operators.dedup.buckets import BucketDeduplicator
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


def _short(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def change_example(before: str, after: str) -> dict[str, str]:
    """Before/after cut around the first change, so the removed e-mail or link is in view."""
    start = max(0, _common_prefix(before, after) - EXAMPLE_CHARS // 3)

    def window(text: str) -> str:
        cut = text[start: start + EXAMPLE_CHARS]
        return ("…" if start else "") + cut + ("…" if start + EXAMPLE_CHARS < len(text) else "")
    return {"before": window(before), "after": window(after)}


def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix, by bisection on slices (no Python loop over the characters)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle - 1
    return low


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

    Filters' statistics go into the batch's `stats` column when it has one (`operators.stream.with_bookkeeping`),
    for the kept and the dropped documents alike.
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
    """Mark the decided drops and rewrites on a batch (in the streaming runner or on Ray workers); the step's
    examples are its first EXAMPLES_PER_STEP drops and rewrites."""
    drop_step = batch.column(DROP_STEP).to_numpy(zero_copy_only=False).copy()
    stats = StepStats(index, "", "deduplicator", docs_in=int((drop_step == ALIVE).sum()))
    dropped: dict[int, str] = {}  # position in the batch -> reason
    rewritten: dict[int, str] = {}  # position -> new text
    shown: list[int] = []  # positions of the examples
    if failed or decision.drops or decision.rewrites:
        rows = batch.column(ROW).to_pylist()
        for i in np.flatnonzero(drop_step == ALIVE).tolist():
            row = rows[i]
            if row in failed:
                dropped[i] = failed[row]
                stats.errors += 1
            elif row in decision.drops or row in decision.rewrites:
                if row in decision.drops:
                    dropped[i] = decision.drops[row]
                else:
                    rewritten[i] = decision.rewrites[row]
                if len(shown) < EXAMPLES_PER_STEP:
                    shown.append(i)
    before = batch.column(text_key).take(pa.array(shown, pa.int64())).to_pylist()
    examples = [{"dropped": _short(text), "reason": dropped[i]} if i in dropped else change_example(text, rewritten[i])
                for i, text in zip(shown, before, strict=True)]
    texts = batch.column(text_key).to_pylist() if rewritten else []
    for i, new in rewritten.items():
        texts[i] = new
    reasons = batch.column(DROP_REASON).to_pylist() if dropped else []
    for i, reason in dropped.items():
        drop_step[i], reasons[i] = index, reason
    stats.changed = len(rewritten)
    stats.dropped = len(dropped)
    stats.docs_out = stats.docs_in - stats.dropped
    stats.examples = examples
    if rewritten:
        batch = batch.set_column(batch.schema.get_field_index(text_key), text_key, pa.array(texts, pa.large_string()))
    if dropped:
        batch = batch.set_column(batch.schema.get_field_index(DROP_STEP), DROP_STEP, pa.array(drop_step, pa.int32()))
        batch = batch.set_column(batch.schema.get_field_index(DROP_REASON), DROP_REASON,
                                 pa.array(reasons, pa.string()))
    for name, kind in ((text_key, pa.large_string()), (DROP_STEP, pa.int32()), (DROP_REASON, pa.string())):
        if batch.schema.field(name).type != kind:  # the types a rebuilt column has: one schema for every batch
            batch = batch.set_column(batch.schema.get_field_index(name), name, batch.column(name).cast(kind))
    return batch, stats, examples


def run_local(recipe: Recipe, table: pa.Table, num_proc: int = 1, log: Callable[[str], None] | None = None
              ) -> RecipeResult:
    """The recipe over an in-memory table (tests, a stage's few records): `run_stream` over its batches, the kept
    rows and drops read back as tables."""
    from operators.stream import ParquetSink, output_schemas, run_stream

    if recipe.text_key not in table.column_names:
        raise RecipeError(f"input has no text column {recipe.text_key!r} (columns: {', '.join(table.column_names)})")
    batches = [table.slice(start, BATCH_ROWS) for start in range(0, table.num_rows, BATCH_ROWS)]
    with tempfile.TemporaryDirectory(prefix="datamate-recipe-") as work:
        kept, drops = ParquetSink(Path(work) / "kept.parquet"), ParquetSink(Path(work) / "drops.parquet")
        result = run_stream(recipe, batches, Path(work), kept, drops, num_proc=num_proc, log=log)
        kept.close()
        drops.close()
        kept_schema, drops_schema = output_schemas(table.schema, recipe)  # an empty result has them too
        kept_table = pq.read_table(kept.path) if kept.rows else kept_schema.empty_table()
        drops_table = pq.read_table(drops.path) if drops.rows else drops_schema.empty_table()
    return RecipeResult(kept_table, drops_table, result.stats, recipe.hash)
