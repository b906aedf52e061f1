"""`datamate` command line. Each module in this package is the sub-command of its name (`ops.py`: `datamate ops`)
and exposes `register(subparsers)`; `register` adds its parser and sets `func` to a callable taking the parsed args and
returning an exit code.

The CLI must answer at once (`bench/cli.py` times it): only the module of the command being run is imported,
the others are listed by the first line of their docstring, and a sub-command module imports nothing heavy
(Dagster, pyarrow, models) at module level, only inside the function that runs it.
"""

import argparse
import ast
import importlib
import importlib.util
import pkgutil
import sys


def summary(module_name: str) -> str:
    """The first sentence of a module's docstring, read without importing it (`datamate --help`)."""
    origin = importlib.util.find_spec(f"{__name__}.{module_name}").origin
    with open(origin, encoding="utf-8") as source:
        docstring = ast.get_docstring(ast.parse(source.read())) or ""
    paragraph = " ".join(docstring.split("\n\n")[0].split())
    # "`datamate demo`: run every stage ..." -> "run every stage ..."
    _, _, text = paragraph.partition("`: ") if paragraph.startswith("`") else ("", "", paragraph)
    return text.split(". ")[0].rstrip(".")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with `command` fully registered; the other commands appear by name and summary only."""
    parser = argparse.ArgumentParser(prog="datamate", description="DataMate: data preparation for LLMs on Dagster")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = sorted(module.name for module in pkgutil.iter_modules(__path__) if not module.name.startswith("_"))
    for name in names:
        if name == command:
            importlib.import_module(f"{__name__}.{name}").register(subparsers)
        else:
            subparsers.add_parser(name, help=summary(name), add_help=False)
    return parser


def command_of(argv: list[str]) -> str | None:
    """The sub-command named on the command line (the first argument that is not an option)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(command_of(argv)).parse_args(argv)
    from datamate_assets.cli.project import ProjectError

    try:
        return args.func(args) or 0
    except ProjectError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
