"""A user's own Dagster project: created by Dagster's scaffolding, this package installed with plain pip into a
fresh venv, a dataset scaffolded with `dg scaffold defs`, checked, listed and materialized with `dg launch`.
Exactly the README's "Use it in your own Dagster project" commands. Slow (a fresh install): e2e."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PIP_FLAGS = ["--disable-pip-version-check", "--find-links", "/opt/wheels", "--extra-index-url",
             "file:///opt/pypi/simple"]


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 1800) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


@pytest.mark.e2e
@pytest.mark.timeout(3600)
def test_a_new_dagster_project_scaffolds_and_materializes_a_dataset(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", "HOME": str(tmp_path), "COLUMNS": "200",
           "DATAMATE_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    (tmp_path / "dagster_home").mkdir()
    run([str(bin_dir / "pip"), "install", *PIP_FLAGS, str(REPO), "create-dagster==1.13.*"], tmp_path, env)

    run([str(bin_dir / "create-dagster"), "project", "--no-uv-sync", "myproject"], tmp_path, env)
    project = tmp_path / "myproject"
    run([str(bin_dir / "pip"), "install", *PIP_FLAGS, "-e", str(project)], tmp_path, env)

    assert "datamate_assets.DatasetComponent" in run([str(bin_dir / "dg"), "list", "components"], project, env)
    run([str(bin_dir / "dg"), "scaffold", "defs", "datamate_assets.DatasetComponent", "mydocs"], project, env)
    assert (project / "src" / "myproject" / "defs" / "mydocs" / "defs.yaml").is_file()
    run([str(bin_dir / "dg"), "check", "defs"], project, env)
    listed = run([str(bin_dir / "dg"), "list", "defs"], project, env)
    assert "mydocs/indexed" in listed and "mydocs_pipeline" in listed

    run([str(bin_dir / "dg"), "launch", "--assets", "group:mydocs"], project, env)
    counts = run([str(bin_dir / "python"), "-c",
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
