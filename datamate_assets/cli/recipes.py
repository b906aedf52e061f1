"""`datamate recipes check CONFIG.yaml`: say, before any data is read, what of a Data-Juicer config runs here.

For each operator: supported or not (and why), its parameters with defaults filled in, the model files it
needs and where they are looked for; then the global keys that are ignored and what happens instead.
"""

import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("recipes", help="Check Data-Juicer config files")
    actions = parser.add_subparsers(dest="recipes_command", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="Report supported operators, model files and ignored keys")
    check.add_argument("configs", type=Path, nargs="+", help="Data-Juicer config file(s)")
    check.add_argument("--json", action="store_true", help="Print the report as JSON")
    check.set_defaults(func=run_check)


def run_check(args) -> int:
    from dataclasses import asdict

    from operators.dj_config import check_config
    from operators.recipe import RecipeError

    status = 0
    for path in args.configs:
        try:
            report = check_config(path)
        except RecipeError as error:
            print(f"error: {error}", file=sys.stderr)
            status = 2
            continue
        status = status if report.ok else 1
        if args.json:
            print(json.dumps({**asdict(report), "path": str(path), "ok": report.ok}, indent=2, default=str))
            continue
        print(f"{path}: {'runs here' if report.ok else 'does NOT run here'}")
        for error in report.errors:
            print(f"  error: {error}")
        for step in report.steps:
            mark = "ok " if step.ok else "NO "
            print(f"  {mark} [{step.index}] {step.name}" + (f": {step.message}" if step.message else ""))
            if step.ok and step.params:
                print("        " + ", ".join(f"{k}={v!r}" for k, v in step.params.items()))
        for key, instead in report.ignored.items():
            print(f"  ignored `{key}`: {instead}")
    return status
