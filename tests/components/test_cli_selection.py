"""`dagster asset materialize` with a selection that matches nothing runs nothing and fails, saying why
(Dagster's CLI would otherwise run every asset of every dataset)."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[2]
DAGSTER = Path(sys.executable).parent / "dagster"


def test_a_selection_that_matches_nothing_runs_nothing(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "apt.md").write_text("# APT\n\n" + "APT installs Debian packages from the configured mirrors. " * 6)
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    (datasets / "mydocs.yaml").write_text(f"name: mydocs\nsources:\n  - {{type: folder, path: '{docs}'}}\n")
    home = tmp_path / "home"
    env = {**os.environ, "DATAMATE_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"),
           "DATAMATE_DATASETS_DIR": str(datasets)}
    env.pop("DATAMATE_STORAGE_URL", None)
    (home / "dagster").mkdir(parents=True)

    result = subprocess.run(
        [str(DAGSTER), "asset", "materialize", "-m", "datamate_assets.definitions", "--select", "group:mydcos"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "selects no asset" in output and "misspelt" in output, output[-3000:]
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert instance.get_latest_materialization_event(dg.AssetKey(["mydocs", "collected"])) is None
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.FAILURE
        assert not instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
    assert not (home / "storage" / "mydocs").exists()
