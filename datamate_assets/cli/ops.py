"""`datamate ops list [--json] [--kind KIND]`: the operator catalogue (name, kind, parameters).

Operators from installed packages (entry-point group `datamate.operators`) are listed with their module;
Data-Juicer's text operators that do not run here yet are listed last, with the reason.
"""

import json
import sys

KINDS = ("mapper", "filter", "deduplicator", "selector")
BUILTIN_PREFIX = "operators."


def register(subparsers) -> None:
    parser = subparsers.add_parser("ops", help="Inspect the cleaning operators")
    actions = parser.add_subparsers(dest="ops_command", required=True, metavar="ACTION")
    list_parser = actions.add_parser("list", help="Print every operator with its parameters")
    list_parser.add_argument("--json", action="store_true", help="Print the catalogue as JSON")
    list_parser.add_argument("--kind", choices=KINDS, help="Only operators of this kind")
    list_parser.set_defaults(func=run_list)


def shown_default(default) -> str:
    """Data-Juicer's "no limit" defaults (sys.maxsize, -sys.maxsize, as int or float) in words."""
    if isinstance(default, int | float) and not isinstance(default, bool) and abs(default) == sys.maxsize:
        return "no limit"
    return repr(default)


def run_list(args) -> int:
    from operators.registry import catalogue, not_supported

    entries = [entry for entry in catalogue() if args.kind in (None, entry["kind"])]
    missing = not_supported() if args.kind is None else {}
    if args.json:
        unsupported = [{"name": name, "supported": False, "reason": reason} for name, reason in missing.items()]
        print(json.dumps(entries + unsupported, indent=2, default=str))
        return 0
    for entry in entries:
        origin = "" if entry["module"].startswith(BUILTIN_PREFIX) else f"  (from {entry['module']})"
        print(f"{entry['name']}  [{entry['kind']}]  {entry['description']}{origin}")
        for param in entry["params"]:
            default = "required" if param["required"] else f"default {shown_default(param['default'])}"
            print(f"    {param['name']}: {param['type']} ({default}) - {param['description']}")
    counts = ", ".join(f"{sum(e['kind'] == kind for e in entries)} {kind}s" for kind in KINDS)
    print(f"\n{len(entries)} operators: {counts}")
    if missing:
        print(f"\nData-Juicer text operators not supported yet ({len(missing)}):")
        for name, reason in missing.items():
            print(f"  {name}: {reason}")
    return 0
