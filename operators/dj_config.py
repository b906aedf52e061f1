"""Data-Juicer config files, as Data-Juicer publishes them: global keys plus a `process:` list.

`load_config` reads the file, applies command-line overrides, loads the operators it names from outside this
package (`custom_operator_paths`) and validates every step, all before any data is read. Keys that have no
meaning here are accepted and reported once each with what happens instead; unknown keys are an error that
lists the close names. `InputDataset` / `Exporter` follow Data-Juicer's `dataset_path` and
`export_path` / `export_shard_size` conventions, a batch at a time.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from operators.base import DEFAULT_TEXT_KEY
from operators.parquet import parquet_batches
from operators.recipe import BATCH_ROWS, STATS, Recipe, RecipeError, read_recipe_file
from operators.registry import load_operator_paths

# Global keys read here, with what they mean in DataMate.
HANDLED_KEYS = {
    "project_name": "name of the run (logged)",
    "dataset_path": "input file or folder (jsonl, json, parquet, csv, txt)",
    "export_path": "output file (jsonl, json or parquet)",
    "export_type": "output format when export_path has no suffix",
    "export_shard_size": "largest shard in bytes; 0 = one file",
    "keep_stats_in_res_ds": "keep the `stats` column in the exported records",
    "np": "processes for mappers and filters (this one and np - 1 workers)",
    "text_keys": "field holding the text (the first one of a list)",
    "executor_type": "default (this machine) or ray",
    "ray_address": "Ray cluster to connect to with executor_type: ray",
    "custom_operator_paths": "Python files or folders of operators, imported before the recipe is checked",
    "process": "the operators",
    "percentiles": "quantiles in `datamate analyze`",
    "suffixes": "only read input files with these suffixes",
}

# Data-Juicer keys accepted but without effect here, with what DataMate does instead.
IGNORED_KEYS = {
    "use_cache": "no Hugging Face cache: batches stream through the operators",
    "ds_cache_dir": "no Hugging Face cache",
    "cache_compress": "no cache files are written",
    "use_checkpoint": "Dagster materializations are the checkpoints (the CLI runs in one go)",
    "temp_dir": "no temporary cache files",
    "open_tracer": "every dropped record is kept with its operator and reason (--drops); examples per operator "
                   "are in the stats",
    "op_list_to_trace": "every operator is traced (drops and examples)",
    "trace_num": "3 examples per operator are kept in the stats",
    "op_fusion": "operators run batch by batch without fusion",
    "fusion_strategy": "operators run batch by batch without fusion",
    "adaptive_batch_size": "fixed batches of 2000 records",
    "turbo": "operators are batched already",
    "skip_op_error": "always on: a record that makes an operator fail is dropped with the error",
    "export_in_parallel": "one writer",
    "export_extra_args": "no extra export formats",
    "keep_hashes_in_res_ds": "dedup fingerprints are never added to the records",
    "export_original_dataset": "analysis reads the input; the export is the cleaned data",
    "save_stats_in_one_file": "stats are a column (and one _stats.jsonl file)",
    "open_monitor": "per-operator seconds are in the stats",
    "work_dir": "outputs go next to export_path",
    "image_key": "text only", "image_bytes_key": "text only", "image_special_token": "text only",
    "audio_key": "text only", "audio_special_token": "text only", "video_key": "text only",
    "video_special_token": "text only", "eoc_special_token": "text only",
    "data_probe_algo": "`datamate analyze --sample N` samples uniformly",
    "data_probe_ratio": "`datamate analyze --sample N` samples uniformly",
    "hpo_config": "no hyper-parameter search",
    "debug": "use --verbose logging instead",
    "open_insight_mining": "no insight mining",
    "op_list_to_mine": "no insight mining",
    "event_logging": "Dagster logs the run's events",
}

# Data-Juicer keys whose meaning we cannot honour: an error, not a silent change of results.
UNSUPPORTED_KEYS = {
    "dataset": "use dataset_path (a file or folder); dataset sources and mixtures are not supported",
    "validators": "dataset validators are not supported; a dataset spec validates its sources",
    "generated_dataset_config": "generated datasets are not supported; use dataset_path",
    "auto": "auto analysis is `datamate analyze`",
    "auto_num": "auto analysis is `datamate analyze`",
}

INPUT_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".txt")
EXPORT_SUFFIXES = ("jsonl", "json", "parquet")


@dataclass
class DJConfig:
    """A validated Data-Juicer config: where data comes from and goes, how it runs, and the recipe."""

    path: Path
    recipe: Recipe
    project_name: str = ""
    dataset_path: Path | None = None
    export_path: Path | None = None
    export_shard_size: int = 0
    keep_stats_in_res_ds: bool = False
    np: int = 1
    executor: str = "local"
    ray_address: str | None = None
    percentiles: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    suffixes: list[str] = field(default_factory=list)
    custom_operator_paths: list[Path] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)  # key -> what we do instead


def _check_keys(path: Path, raw: dict[str, Any]) -> None:
    known = [*HANDLED_KEYS, *IGNORED_KEYS, *UNSUPPORTED_KEYS]
    for key in raw:
        if key in UNSUPPORTED_KEYS:
            raise RecipeError(f"{path}: key {key!r} is not supported: {UNSUPPORTED_KEYS[key]}")
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else f" (known keys: {', '.join(sorted(known))})"
            raise RecipeError(f"{path}: unknown key {key!r}{hint}")


def _relative(base: Path, value: str | Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base.parent / path)


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> DJConfig:
    """Read and validate a Data-Juicer config file; `overrides` (e.g. from the command line) win over the file.

    Relative paths in the file are taken from the file's folder (paths given as overrides from the current one).
    """
    path = Path(path)
    raw = read_recipe_file(path)
    _check_keys(path, raw)
    set_overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    values = {**raw, **set_overrides}

    def where(key: str, value: Any) -> Path:
        return Path(value).expanduser() if key in set_overrides else _relative(path, value)

    custom = values.get("custom_operator_paths") or []
    custom_paths = [where("custom_operator_paths", p) for p in ([custom] if isinstance(custom, str) else custom)]
    try:
        load_operator_paths(custom_paths)
    except (ImportError, OSError, SyntaxError, ValueError) as error:
        raise RecipeError(f"{path}: custom_operator_paths: {error}") from error

    keys = values.get("text_keys") or DEFAULT_TEXT_KEY
    text_key = keys[0] if isinstance(keys, list) else keys
    try:
        recipe = Recipe.from_process(values["process"], text_key)
    except RecipeError as error:
        raise RecipeError(f"{path}: {error}") from error

    executor = values.get("executor_type") or "default"
    if executor not in ("default", "local", "ray"):
        raise RecipeError(f"{path}: executor_type must be default or ray, got {executor!r}")
    export_path = where("export_path", values["export_path"]) if values.get("export_path") else None
    if export_path is not None:
        _export_suffix(export_path, values.get("export_type"))
    suffixes = values.get("suffixes") or []
    return DJConfig(
        path=path,
        recipe=recipe,
        project_name=str(values.get("project_name") or ""),
        dataset_path=where("dataset_path", values["dataset_path"]) if values.get("dataset_path") else None,
        export_path=export_path,
        export_shard_size=int(values.get("export_shard_size") or 0),
        keep_stats_in_res_ds=bool(values.get("keep_stats_in_res_ds", False)),
        np=max(1, int(values.get("np") or 1)),
        executor="ray" if executor == "ray" else "local",
        ray_address=values.get("ray_address") if values.get("ray_address") not in (None, "auto") else None,
        percentiles=list(values.get("percentiles") or [0.25, 0.5, 0.75]),
        suffixes=[s if s.startswith(".") else f".{s}" for s in ([suffixes] if isinstance(suffixes, str) else suffixes)],
        custom_operator_paths=custom_paths,
        ignored={key: IGNORED_KEYS[key] for key in raw if key in IGNORED_KEYS},
    )


# --- data in and out ------------------------------------------------------------------------------------------
def _input_files(path: Path, suffixes: list[str]) -> list[Path]:
    wanted = tuple(suffixes) or INPUT_SUFFIXES
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise RecipeError(f"dataset_path {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in wanted and p.suffix in INPUT_SUFFIXES)
    if not files:
        raise RecipeError(f"dataset_path {path} has no {', '.join(wanted)} files")
    return files


def _json_chunks(path: Path, rows: int) -> Iterator[list[dict[str, Any]]]:
    """The records of a JSON lines file (or a JSON array file, which is parsed whole), `rows` at a time."""
    with path.open(encoding="utf-8") as lines:
        first = lines.read(1)
        lines.seek(0)
        if first == "[":
            try:
                records = json.load(lines)
            except json.JSONDecodeError as error:
                raise RecipeError(f"{path}: not a JSON array of objects: {error}") from error
            numbered: Iterable[tuple[int, Any]] = enumerate(records, 1)
        else:
            numbered = ((number, _json_line(path, number, line)) for number, line in enumerate(lines, 1)
                        if line.strip())
        chunk = []
        for number, record in numbered:
            if not isinstance(record, dict):
                raise RecipeError(f"{path}:{number}: not a JSON object: {type(record).__name__}")
            chunk.append(record)
            if len(chunk) == rows:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def _json_line(path: Path, number: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise RecipeError(f"{path}:{number}: not a JSON object: {error}") from error


def _records_schema(path: Path, records: list[dict[str, Any]]) -> pa.Schema:
    """The fields of every record (`Table.from_pylist` would take the first record's keys only)."""
    try:
        return pa.schema(list(pa.array(records).type))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise RecipeError(f"{path}: records whose fields do not fit one type: {error}") from error


def _records_table(path: Path, records: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    try:
        return pa.Table.from_pylist(records, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise RecipeError(f"{path}: records whose fields do not fit one type: {error}") from error


def _file_schema(path: Path) -> pa.Schema:
    """One input file's schema: Parquet and CSV from their first bytes, JSON from every record (its fields may
    appear, or change from null to a type, anywhere in the file)."""
    if path.suffix == ".parquet":
        return pq.read_schema(path)
    if path.suffix in (".jsonl", ".json"):
        return _unify(path, [_records_schema(path, chunk) for chunk in _json_chunks(path, BATCH_ROWS)])
    if path.suffix == ".csv":
        with pa_csv.open_csv(path) as reader:
            return reader.schema
    if path.suffix == ".txt":
        return pa.schema([("text", pa.string())])
    raise RecipeError(f"{path}: unsupported format {path.suffix!r} (use {', '.join(INPUT_SUFFIXES)})")


def _unify(where: Path, schemas: list[pa.Schema]) -> pa.Schema:
    try:
        return pa.unify_schemas(schemas, promote_options="permissive") if schemas else pa.schema([])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise RecipeError(f"{where}: {error}") from error


def _conform(path: Path, table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A file's batch in the dataset's schema: columns aligned by name, missing ones null."""
    columns = []
    for wanted in schema:
        if wanted.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, wanted.type))
            continue
        try:
            columns.append(table.column(wanted.name).cast(wanted.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
            raise RecipeError(f"{path}: field {wanted.name!r} cannot be read as {wanted.type}: {error}") from error
    return pa.Table.from_arrays(columns, schema=schema)


@dataclass
class InputDataset:
    """A file or a folder of files (recursively), read in batches; files with other columns are aligned by name
    (Data-Juicer's `dataset_path`). A .txt file is one record (Data-Juicer's text formatter)."""

    files: list[Path]
    schema: pa.Schema

    @classmethod
    def open(cls, path: Path, suffixes: list[str] | None = None) -> InputDataset:
        """List the files and settle one schema for all of them (JSON files are read once for it)."""
        files = _input_files(Path(path), suffixes or [])
        return cls(files, _unify(Path(path), [_file_schema(file) for file in files]))

    def batches(self, rows: int = BATCH_ROWS) -> Iterator[pa.Table]:
        for path in self.files:
            for table in self._file_batches(path, rows):
                if table.num_rows:
                    yield _conform(path, table, self.schema)

    def _file_batches(self, path: Path, rows: int) -> Iterator[pa.Table]:
        if path.suffix == ".parquet":
            for batch in parquet_batches(path, rows):
                yield pa.Table.from_batches([batch])
        elif path.suffix in (".jsonl", ".json"):
            for chunk in _json_chunks(path, rows):
                yield _records_table(path, chunk, self.schema)
        elif path.suffix == ".csv":
            with pa_csv.open_csv(path) as reader:
                try:
                    for batch in reader:
                        yield pa.Table.from_batches([batch])
                except pa.ArrowInvalid as error:  # a later block that does not fit the types of the first
                    raise RecipeError(f"{path}: {error}") from error
        else:
            yield pa.table({"text": [path.read_text(encoding="utf-8", errors="replace")]})

    def table(self) -> pa.Table:
        """The whole dataset in memory (`datamate analyze`, benchmarks); cleaning streams `batches()`."""
        return pa.Table.from_batches([b for t in self.batches() for b in t.to_batches()], schema=self.schema)


def read_dataset(path: Path, suffixes: list[str] | None = None) -> pa.Table:
    """A file or a folder of files as one in-memory table (see `InputDataset`)."""
    return InputDataset.open(path, suffixes).table()


def _export_suffix(path: Path, export_type: str | None = None) -> str:
    suffix = (export_type or path.suffix.lstrip(".")).lower()
    if suffix not in EXPORT_SUFFIXES:
        raise RecipeError(f"export_path {path}: unsupported format {suffix!r} (use {', '.join(EXPORT_SUFFIXES)})")
    return suffix


class _FileWriter:
    """One export file, appended to batch by batch: JSON lines (.jsonl and .json, as Data-Juicer writes) or
    Parquet."""

    def __init__(self, path: Path, suffix: str, schema: pa.Schema):
        self.path = path
        self.parquet = pq.ParquetWriter(path, schema) if suffix == "parquet" else None
        self.lines = None if self.parquet else path.open("w", encoding="utf-8")

    def write(self, table: pa.Table) -> None:
        if self.parquet:
            self.parquet.write_table(table)
            return
        for batch in table.to_batches(max_chunksize=1000):
            self.lines.writelines(json.dumps(row, ensure_ascii=False, default=str) + "\n"
                                  for row in batch.to_pylist())

    def close(self) -> None:
        (self.parquet or self.lines).close()


class Exporter:
    """Writes records as Data-Juicer exports them, batch by batch: one file, or shards of at most `shard_size`
    bytes (Arrow size) named `{name}-{i}-of-{n}.{suffix}` once the last one is written; without `keep_stats` the
    `stats` column goes to `{name}_stats.jsonl` instead. `schema`: the records' schema (an empty export has it)."""

    def __init__(self, path: Path, schema: pa.Schema, shard_size: int = 0, export_type: str | None = None,
                 keep_stats: bool = False):
        self.path, self.shard_size, self.rows = path, shard_size, 0
        self.suffix = _export_suffix(path, export_type)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.stats = None
        if STATS in schema.names and not keep_stats:
            stats_path = path.with_name(f"{path.stem}_stats.jsonl")
            self.stats = _FileWriter(stats_path, "jsonl", pa.schema([schema.field(STATS)]))
            schema = schema.remove(schema.get_field_index(STATS))
        self.schema = schema
        self.shards: list[Path] = []
        self.current: _FileWriter | None = None
        self.current_bytes = 0.0

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        table = table if isinstance(table, pa.Table) else pa.Table.from_batches([table])
        if not table.num_rows:
            return
        if self.stats:
            self.stats.write(table.select([STATS]))
        table = table.select(self.schema.names).cast(self.schema)
        self.rows += table.num_rows
        if self.shard_size <= 0:
            self._writer().write(table)
            return
        row_bytes = table.nbytes / table.num_rows
        start = 0
        while start < table.num_rows:
            if self.current is not None and self.current_bytes >= self.shard_size:
                self.current.close()
                self.current = None
            room = self.shard_size - self.current_bytes
            take = min(table.num_rows - start, max(1, int(room // row_bytes)))
            self._writer().write(table.slice(start, take))
            self.current_bytes += take * row_bytes
            start += take

    def _writer(self) -> _FileWriter:
        if self.current is None:
            path = self.path if self.shard_size <= 0 else \
                self.path.with_name(f"{self.path.stem}-{len(self.shards)}.{self.suffix}.partial")
            self.current, self.current_bytes = _FileWriter(path, self.suffix, self.schema), 0.0
            self.shards.append(path)
        return self.current

    def close(self) -> list[Path]:
        """Finish the files; returns the files written, the data first."""
        self._writer()  # an empty export is one empty file
        self.current.close()
        if self.stats:
            self.stats.close()
        files = self.shards
        if self.shard_size > 0:
            if self.rows <= 1:  # one record is never sharded
                files = [self.shards[0].rename(self.path)]
            else:
                count = len(self.shards)
                width = len(str(count)) + 1
                files = [shard.rename(self.path.with_name(f"{self.path.stem}-{index:0{width}d}-of-{count:0{width}d}"
                                                          f".{self.suffix}"))
                         for index, shard in enumerate(self.shards)]
        return [*files, *([self.stats.path] if self.stats else [])]


# --- checking a config without running it ----------------------------------------------------------------------
@dataclass
class StepCheck:
    index: int
    name: str
    ok: bool
    message: str = ""  # the error, or the model files used
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ConfigCheck:
    path: Path
    steps: list[StepCheck]
    ignored: dict[str, str]
    errors: list[str]  # problems outside the steps (keys, paths)

    @property
    def ok(self) -> bool:
        return not self.errors and all(step.ok for step in self.steps)


def check_config(path: Path) -> ConfigCheck:
    """Every problem of a config file at once (unlike `load_config`, which stops at the first)."""
    from operators.models import model_dirs
    from operators.registry import OperatorConfigError, build_operator

    path = Path(path)
    raw = read_recipe_file(path)
    errors = []
    try:
        _check_keys(path, raw)
    except RecipeError as error:
        errors.append(str(error))
    custom = raw.get("custom_operator_paths") or []
    try:
        load_operator_paths([_relative(path, p) for p in ([custom] if isinstance(custom, str) else custom)])
    except (ImportError, OSError, SyntaxError, ValueError) as error:
        errors.append(f"custom_operator_paths: {error}")
    keys = raw.get("text_keys") or DEFAULT_TEXT_KEY
    text_key = keys[0] if isinstance(keys, list) else keys
    steps = []
    dirs = ", ".join(str(d) for d in model_dirs())
    for index, step in enumerate(raw["process"]):
        step = {step: {}} if isinstance(step, str) else step
        if not isinstance(step, dict) or len(step) != 1:
            steps.append(StepCheck(index, str(step), False, "must be {operator_name: {params}}"))
            continue
        (name, params), = step.items()
        try:
            op = build_operator(name, params or {}, text_key=text_key)
        except OperatorConfigError as error:
            steps.append(StepCheck(index, name, False, str(error)))
            continue
        models = [str(value) for value in vars(op).values() if isinstance(value, Path)]
        message = f"model files: {', '.join(models)} (searched: {dirs})" if models else ""
        steps.append(StepCheck(index, name, True, message, op.params.model_dump(mode="json")))
    return ConfigCheck(path, steps, {key: IGNORED_KEYS[key] for key in raw if key in IGNORED_KEYS}, errors)
