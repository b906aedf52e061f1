"""`datamate ops list [--json] [--kind KIND]`: the operator catalogue (name, kind, parameters)."""

import json

from operators.registry import catalogue

KINDS = ("mapper", "filter", "deduplicator")


def register(subparsers) -> None:
    parser = subparsers.add_parser("ops", help="Inspect the cleaning operators")
    actions = parser.add_subparsers(dest="ops_command", required=True, metavar="ACTION")
    list_parser = actions.add_parser("list", help="Print every operator with its parameters")
    list_parser.add_argument("--json", action="store_true", help="Print the catalogue as JSON")
    list_parser.add_argument("--kind", choices=KINDS, help="Only operators of this kind")
    list_parser.set_defaults(func=run_list)


def run_list(args) -> int:
    entries = [entry for entry in catalogue() if args.kind in (None, entry["kind"])]
    if args.json:
        print(json.dumps(entries, indent=2, default=str))
        return 0
    for entry in entries:
        print(f"{entry['name']}  [{entry['kind']}]  {entry['description']}")
        for param in entry["params"]:
            default = "required" if param["required"] else f"default {param['default']!r}"
            print(f"    {param['name']}: {param['type']} ({default}) - {param['description']}")
    counts = ", ".join(f"{sum(e['kind'] == kind for e in entries)} {kind}s" for kind in KINDS)
    print(f"\n{len(entries)} operators: {counts}")
    return 0
