"""Token and cost budgets: a stage stops cleanly at its budget, commits what it has, says so, and the next
materialization resumes from the cache without paying again. Against a scripted endpoint, because the point
is the arithmetic: every call costs exactly 100 prompt + 20 completion tokens."""

import sys
from pathlib import Path

import pytest

from datamate_resources import tables
from datamate_resources.storage import ObjectStore
from tests.llm import scripted_llm
from tests.llm.conftest import REPO, openai_resource
from tests.llm.test_synthesis_assets import chunk_table, make_spec, materialize, output_metadata
from tests.servers import free_port, server_process

PRICES = {scripted_llm.MODEL: {"input_per_million": 1000.0, "output_per_million": 2000.0}}
CALL_COST = (100 * 1000.0 + 20 * 2000.0) / 1e6  # 0.14 USD


class Scripted:
    def __init__(self, base_url: str, journal: Path):
        self.base_url, self.journal = base_url, journal

    def calls(self) -> int:
        return len(self.journal.read_text().splitlines()) if self.journal.exists() else 0


@pytest.fixture
def scripted(tmp_path) -> Scripted:
    port, journal = free_port(), tmp_path / "journal.jsonl"
    args = [sys.executable, "-m", "tests.llm.scripted_llm", "--port", str(port), "--journal", str(journal)]
    with server_process(args, port, tmp_path / "scripted.log", timeout=60, cwd=REPO):
        yield Scripted(f"http://127.0.0.1:{port}/v1", journal)


@pytest.fixture
def storage(tmp_path) -> ObjectStore:
    store = ObjectStore(url=f"file://{tmp_path / 'storage'}")
    tables.write(store, "synth_test", "chunks", chunk_table())
    return store


def resource(scripted: Scripted):
    # One request in flight, so the budget is checked between calls and the count is exact.
    return openai_resource(scripted.base_url, model=scripted_llm.MODEL, max_concurrency=1, prices=PRICES)


@pytest.mark.parametrize("budget", [{"max_tokens": 150}, {"max_cost": 0.2}])
def test_budget_stops_cleanly_and_the_next_run_resumes_from_the_cache(storage, scripted, budget):
    spec = make_spec(kinds=["qa"], max_records=3, budget=budget)
    llm = resource(scripted)
    first = materialize(spec, storage, llm)
    assert first.success
    meta = output_metadata(first)
    # The first call (120 tokens, 0.14 USD) is under the budget, so a second is made; then the budget is spent.
    assert (meta["llm_calls"], meta["llm_budget_stopped"], meta["records_kept"]) == (2, 1, 2)
    assert (meta["llm_input_tokens"], meta["llm_output_tokens"]) == (200, 40)
    assert meta["llm_cost_usd"] == pytest.approx(2 * CALL_COST)
    assert "Budget reached" in meta["llm_budget_reached"] and "1 requests were not sent" in meta["llm_budget_reached"]
    drops = tables.read_stage(storage, "synth_test", "synthesized_drops").to_pylist()
    assert [d["reason"] for d in drops] == ["budget reached"]
    assert tables.read_stage(storage, "synth_test", "synthesized").num_rows == 2  # committed what it had

    # Without the budget, the next materialization pays only for the request it did not send.
    resumed = output_metadata(materialize(make_spec(kinds=["qa"], max_records=3), storage, llm))
    assert (resumed["llm_calls"], resumed["llm_cache_hits"], resumed["records_kept"]) == (1, 2, 3)
    assert resumed["llm_cost_usd"] == pytest.approx(CALL_COST) and "llm_budget_reached" not in resumed
    assert scripted.calls() == 3

    # Every materialization's usage is a row of the table the dbt reports read.
    usage = sorted(tables.read_stage(storage, "synth_test", "llm_usage").to_pylist(), key=lambda u: u["recorded_at"])
    assert [(u["stage"], u["calls"], u["cache_hits"], u["budget_stopped"]) for u in usage] == [
        ("synthesized", 2, 0, 1), ("synthesized", 1, 2, 0)]
    assert sum(u["cost_usd"] for u in usage) == pytest.approx(3 * CALL_COST)
    assert sum(u["input_tokens"] + u["output_tokens"] for u in usage) == 3 * 120
