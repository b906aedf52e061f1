"""`datamate export`: stream any version of a stage's table out to JSONL or Parquet.

    datamate export --dataset D --stage S [--version N] [--columns a,b] --format jsonl|parquet OUT
    datamate export --dataset D --stage S --format jsonl --shard-rows 100000 OUTDIR   # OUTDIR/part-00000.jsonl, ...

The table is read in batches, so memory does not depend on its size. OUT `-` writes JSONL to standard output.
A file appears only when complete (written aside, then renamed). `datamate datasets` lists the versions.
"""

import json
import os
import sys
from pathlib import Path

from datamate_assets.cli.project import find_project, published_table


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="Stream a version of a stage's table to JSONL or Parquet")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--stage", required=True, help="e.g. cleaned, chunks, synthesized")
    parser.add_argument("--version", type=int, help="Delta version (default: the latest)")
    parser.add_argument("--format", choices=["jsonl", "parquet"], required=True)
    parser.add_argument("--columns", help="Comma-separated columns (default: all)")
    parser.add_argument("--shard-rows", type=int, help="JSONL only: OUT is a folder of files of at most this many rows")
    parser.add_argument("out", help="Output file (or folder with --shard-rows); - for JSONL on standard output")
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.shard_rows is not None and (args.format != "jsonl" or args.out == "-" or args.shard_rows < 1):
        print("error: --shard-rows needs --format jsonl, a positive count and an output folder", file=sys.stderr)
        return 2
    if args.out == "-" and args.format != "jsonl":
        print("error: only JSONL can be written to standard output", file=sys.stderr)
        return 2
    settings = find_project().activate()

    from datamate_resources import tables

    ref = published_table(settings, args.dataset, args.stage, args.version)
    try:
        columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
        missing = sorted(set(columns or []) - set(ref.schema.names))
        if missing:
            print(f"error: {ref.uri} has no column(s) {', '.join(missing)}; it has {', '.join(ref.schema.names)}",
                  file=sys.stderr)
            return 1
        batches = ref.batches(columns=columns)
        if args.out == "-":
            rows = write_jsonl(batches, sys.stdout)
        elif args.shard_rows:
            rows = write_shards(batches, Path(args.out), args.shard_rows)
        else:
            rows = write_file(batches, Path(args.out), args.format, ref.head(0, columns=columns).schema)
    except tables.TableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"exported {rows:,} rows of {args.dataset}/{args.stage} version {ref.version} to {args.out}",
          file=sys.stderr)
    return 0


def write_jsonl(batches, out) -> int:
    rows = 0
    for batch in batches:
        for record in batch.to_pylist():
            out.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        rows += batch.num_rows
    return rows


def write_file(batches, path: Path, fmt: str, schema) -> int:
    """One file, written aside and renamed when complete."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        if fmt == "jsonl":
            with open(partial, "w", encoding="utf-8") as out:
                rows = write_jsonl(batches, out)
        else:
            rows, writer = 0, None
            try:
                for batch in batches:
                    writer = writer or pq.ParquetWriter(partial, batch.schema, compression="zstd")
                    writer.write_batch(batch)
                    rows += batch.num_rows
            finally:
                if writer is not None:
                    writer.close()
            if writer is None:  # an empty table still gives a readable file with its columns
                pq.write_table(schema.empty_table(), partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return rows


def write_shards(batches, folder: Path, shard_rows: int) -> int:
    """JSONL files of at most `shard_rows` rows: part-00000.jsonl, part-00001.jsonl, ... each renamed into place
    when full (or at the end)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, shards, out = 0, 0, None
    try:
        for batch in batches:
            while batch.num_rows:
                if out is None:
                    out = open(folder / f".part-{shards:05d}.jsonl.partial", "w", encoding="utf-8")
                    shards, in_shard = shards + 1, 0
                piece = batch.slice(0, shard_rows - in_shard)
                write_jsonl([piece], out)
                in_shard, rows, batch = in_shard + piece.num_rows, rows + piece.num_rows, batch.slice(piece.num_rows)
                if in_shard == shard_rows:
                    finish_shard(out)
                    out = None
        if out is not None:
            finish_shard(out)
            out = None
    finally:
        if out is not None:  # an error mid-shard: no partial file is left looking complete
            out.close()
            Path(out.name).unlink(missing_ok=True)
    return rows


def finish_shard(out) -> None:
    out.close()
    partial = Path(out.name)
    os.replace(partial, partial.with_name(partial.name[1:].removesuffix(".partial")))
