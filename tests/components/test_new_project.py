"""A user's own Dagster project: created by Dagster's scaffolding, with this package (distribution
`datamate-dagster`) added to its dependencies and installed with plain pip into a fresh venv, a dataset scaffolded
with `dg scaffold defs`, checked, listed and materialized with `dg launch`. Exactly the README's "Use it in your
own Dagster project" commands. Slow (a fresh install of ~200 packages): e2e.

pip's cache is the user's (or $PIP_CACHE_DIR), so a second run downloads nothing."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# What a checkout holds besides the package: state, venvs, caches (pip builds in the source tree it is given).
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".datamate", "*.egg-info", "__pycache__", ".venv-*", "build",
                                    "output", "target", "logs", ".pytest_cache", ".ruff_cache")


def run(args: list, cwd: Path, env: dict[str, str], timeout: int = 1800) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout[-4000:]}\n" \
                                   f"{result.stderr[-4000:]}"
    return result.stdout + result.stderr


@pytest.mark.e2e
@pytest.mark.timeout(3600)
def test_a_new_dagster_project_scaffolds_and_materializes_a_dataset(tmp_path):
    venv, bin_dir = tmp_path / "venv", tmp_path / "venv" / "bin"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", "HOME": str(tmp_path), "COLUMNS": "200",
           "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip")),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "DATAMATE_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    (tmp_path / "dagster_home").mkdir()

    # The package as a user gets it: a wheel (here built from a copy of this checkout, not from PyPI).
    source = tmp_path / "datamate-src"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    run([bin_dir / "pip", "wheel", "--no-deps", "-w", tmp_path / "wheels", source], tmp_path, env)

    # Dagster's scaffolding, the same release as the dg the package brings (found by resolving the package).
    run([bin_dir / "pip", "install", "--find-links", tmp_path / "wheels", "datamate-dagster"], tmp_path, env)
    dg_version = run([bin_dir / "python", "-c", "import importlib.metadata as m; print(m.version('dagster-dg-cli'))"],
                     tmp_path, env).strip().splitlines()[-1]
    run([bin_dir / "pip", "install", f"create-dagster=={dg_version}"], tmp_path, env)
    run([bin_dir / "create-dagster", "project", "--no-uv-sync", "myproject"], tmp_path, env)
    project = tmp_path / "myproject"

    # The project declares the package as a dependency, and pip installs the project.
    pyproject = project / "pyproject.toml"
    text, count = re.subn(r"dependencies = \[", 'dependencies = [\n    "datamate-dagster",', pyproject.read_text(),
                          count=1)
    assert count == 1, pyproject.read_text()
    pyproject.write_text(text)
    run([bin_dir / "pip", "install", "--find-links", tmp_path / "wheels", "-e", project], tmp_path, env)
    installed = run([bin_dir / "pip", "list"], tmp_path, env)
    assert not re.search(r"^(torch|sentence-transformers|ray) ", installed, re.M), installed  # no heavy extras

    assert "datamate_assets.DatasetComponent" in run([bin_dir / "dg", "list", "components"], project, env)
    run([bin_dir / "dg", "scaffold", "defs", "datamate_assets.DatasetComponent", "mydocs"], project, env)
    assert (project / "src" / "myproject" / "defs" / "mydocs" / "defs.yaml").is_file()
    run([bin_dir / "dg", "check", "yaml"], project, env)
    run([bin_dir / "dg", "check", "defs"], project, env)
    listed = run([bin_dir / "dg", "list", "defs"], project, env)
    assert "mydocs/indexed" in listed and "mydocs_pipeline" in listed

    run([bin_dir / "dg", "launch", "--assets", "group:mydocs"], project, env)
    counts = run([bin_dir / "python", "-c",
                  "import json\n"
                  "from datamate_resources import open_storage\n"
                  "from datamate_resources.settings import Settings\n"
                  "from datamate_resources.tables import read_stage\n"
                  "storage = open_storage(Settings.from_env())\n"
                  "print(json.dumps([read_stage(storage, 'mydocs', s).num_rows for s in ('collected', 'cleaned')]))"],
                 project, env)
    assert json.loads(counts.strip().splitlines()[-1]) == [3, 3], counts
    # The launch indexed the chunks: Milvus Lite's file is where the embedded default puts it.
    assert (tmp_path / "home" / "milvus.db").exists()
