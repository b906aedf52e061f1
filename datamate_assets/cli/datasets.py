"""`datamate datasets`: list the datasets in storage, their stages and each stage's versions.

    datamate datasets [--dataset NAME] [--versions 5] [--json]

Per version: its number, when it was committed (UTC), the operation, the Dagster run that wrote it and its rows
(from the Delta log: no data is read). Any listed version can be read back with `datamate export --version N`,
unless the dataset's retention removed its files (then export says so).
"""

import json
import sys

from datamate_assets.cli.project import find_project


def register(subparsers) -> None:
    parser = subparsers.add_parser("datasets", help="List datasets, their stages and versions (time, run id, rows)")
    parser.add_argument("--dataset", help="Only this dataset")
    parser.add_argument("--versions", type=int, default=5, help="Newest versions shown per stage (default 5, 0: all)")
    parser.add_argument("--json", action="store_true", help="One JSON object per stage")
    parser.set_defaults(func=run)


def run(args) -> int:
    settings = find_project().activate()

    from datamate_resources import open_storage, tables

    storage = open_storage(settings)
    names = [args.dataset] if args.dataset else tables.datasets(storage)
    if not names:
        print(f"no tables in {storage.url}: materialize a dataset first (`datamate run NAME`)", file=sys.stderr)
        return 1
    failed = False
    for name in names:
        stages = tables.stages(storage, name)
        if not stages:
            print(f"error: dataset {name!r} has no tables in {storage.url}", file=sys.stderr)
            failed = True
            continue
        if not args.json:
            print(name)
        for stage in stages:
            try:
                ref = tables.current(storage, name, stage)
                listed = tables.versions(ref, limit=args.versions or None)
            except tables.TableError as error:
                print(f"error: {error}", file=sys.stderr)
                failed = True
                continue
            if args.json:
                print(json.dumps({"dataset": name, "stage": stage, "uri": ref.uri, "versions": [
                    {**entry, "committed": entry["committed"].isoformat()} for entry in listed]}))
                continue
            print(f"  {stage:<20} {ref.uri}")
            for entry in listed:
                run_id = (entry["run_id"] or "-")[:8]
                print(f"    v{entry['version']:<4} {entry['committed']:%Y-%m-%d %H:%M:%S}Z  {entry['operation']:<13} "
                      f"run {run_id:<8}  {entry['rows']:>12,} rows")
    return 1 if failed else 0
