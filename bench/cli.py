"""CLI start-up benchmark: `python -m bench.cli [--rounds 5] [--importtime]`.

Times the `datamate` commands a user types first (help, an argument error, `validate`, `ops list`) as fresh
processes, in alternating rounds with two baselines measured in the same run: `python -c pass` (the
interpreter) and `python -c "import dagster"` (what every command paid when the parser imported all
sub-commands). Prints the median seconds of each, the ratios and the goal (issue #12: help and argument errors
under 1 s, `validate` and `ops list` under 3 s on an idle 2-core machine); the load average is included because
shared CPUs distort every number. With --importtime, the slowest imports left in each command
(`python -X importtime`, cumulative, top level).

Every process runs with bytecode caching on, as after a normal install (a first, untimed round writes the caches,
under a temporary PYTHONPYCACHEPREFIX so the tree stays clean), even where PYTHONDONTWRITEBYTECODE is set.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATAMATE = str(Path(sys.executable).parent / "datamate")
BASELINES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import dagster'": [sys.executable, "-c", "import dagster"],
}
COMMANDS = {  # command -> goal in seconds
    "datamate --help": 1.0,
    "datamate ops": 1.0,  # missing ACTION: an argument error
    "datamate validate": 3.0,
    "datamate ops list": 3.0,
}
IMPORT_LINE = re.compile(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)")


ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def seconds(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def slowest_imports(command: str, top: int = 8) -> list[tuple[str, float]]:
    """Top-level imports (with what they pulled in) by cumulative time, from one `-X importtime` run."""
    argv = [sys.executable, "-X", "importtime", DATAMATE, *command.split()[1:]]
    stderr = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, check=False).stderr
    rows = [(m.group(3), int(m.group(1)) / 1e6) for m in map(IMPORT_LINE.match, stderr.splitlines())
            if m and len(m.group(2)) == 0]
    return sorted(rows, key=lambda row: -row[1])[:top]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--importtime", action="store_true", help="Also show the slowest imports of each command")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="datamate-bench-pycache-") as cache:
        ENV["PYTHONPYCACHEPREFIX"] = cache
        measure(args.rounds, args.importtime)


def measure(rounds: int, importtime: bool) -> None:
    argvs = {**BASELINES, **{command: [DATAMATE, *command.split()[1:]] for command in COMMANDS}}
    times: dict[str, list[float]] = {name: [] for name in argvs}
    for argv in argvs.values():  # writes the bytecode caches
        seconds(argv)
    for _ in range(rounds):  # alternating, so a change in load hits every command alike
        for name, argv in argvs.items():
            times[name].append(seconds(argv))
    median = {name: statistics.median(values) for name, values in times.items()}
    interpreter, dagster = median["python -c pass"], median["python -c 'import dagster'"]
    print(f"{'command':<28} {'median s':>9} {'x python':>9} {'/ dagster':>9}  goal")
    for name, value in median.items():
        goal = COMMANDS.get(name)
        verdict = "" if goal is None else f"< {goal:.0f} s {'ok' if value < goal else 'MISSED'}"
        print(f"{name:<28} {value:>9.2f} {value / interpreter:>9.1f} {value / dagster:>9.2f}  {verdict}")
    summary = {"rounds": rounds, "load_average": os.getloadavg(), "median_seconds": median,
               "ratio_to_import_dagster": {name: median[name] / dagster for name in COMMANDS}}
    print(json.dumps(summary, indent=None))
    if importtime:
        for command in COMMANDS:
            imports = ", ".join(f"{name} {value:.2f}s" for name, value in slowest_imports(command))
            print(f"\n{command}: {imports}")


if __name__ == "__main__":
    main()
