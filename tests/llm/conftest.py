"""Real OpenAI-compatible servers for the LLM tests, on free loopback ports.

- `llm_server` (in tests/conftest.py, shared with the reliability suite): the packaged SmolLM2 model behind
  `python -m datamate_resources.llm_server`. Yields its base URL, ending in /v1.
- `flaky_llm_server`: a proxy in front of it failing a share of requests (429, 5xx, timeouts, broken JSON,
  non-JSON answers); yields a `FlakyServer` with its base URL and a journal of what it saw.
- `llm_resource` / `flaky_llm_resource`: `LLMResource(provider="openai")` pointing at those, with timeouts and
  backoff short enough for tests.
"""

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from datamate_resources.llm import LLMResource
from tests.servers import free_port, server_process

REPO = Path(__file__).resolve().parents[2]
SERVED_MODEL = "SmolLM2-135M-Instruct.Q4_1"


@dataclass
class FlakyServer:
    base_url: str
    journal: Path
    failure_rate: float
    slow_seconds: float

    def requests(self) -> list[dict]:
        """Every POST the proxy received, with its fate ("ok" or the injected failure)."""
        if not self.journal.exists():
            return []
        return [json.loads(line) for line in self.journal.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def flaky_llm_server(llm_server, tmp_path) -> FlakyServer:
    port = free_port()
    # Held requests outlast the client's timeout (below) by far; real answers, even on a busy CPU, don't.
    server = FlakyServer(f"http://127.0.0.1:{port}/v1", tmp_path / "journal.jsonl", failure_rate=0.4,
                         slow_seconds=90.0)
    args = [sys.executable, "-m", "tests.llm.flaky_proxy", "--upstream", llm_server.removesuffix("/v1"),
            "--port", str(port), "--failure-rate", str(server.failure_rate),
            "--slow-seconds", str(server.slow_seconds), "--journal", str(server.journal)]
    with server_process(args, port, tmp_path / "proxy.log", timeout=120, cwd=REPO):
        yield server


def openai_resource(base_url: str, **overrides) -> LLMResource:
    options = {"provider": "openai", "base_url": base_url, "model": SERVED_MODEL, "max_tokens": 96,
               "request_timeout": 60.0, "max_retries": 6, "max_concurrency": 2, "requests_per_second": 20.0}
    return LLMResource(**{**options, **overrides})


@pytest.fixture
def llm_resource(llm_server) -> LLMResource:
    return openai_resource(llm_server)


@pytest.fixture
def flaky_llm_resource(flaky_llm_server) -> LLMResource:
    # A client timeout below the proxy's injected delay, so "timeout" failures really time out.
    return openai_resource(flaky_llm_server.base_url, request_timeout=30.0)


class Scripted:
    """The scripted OpenAI-compatible endpoint (tests/llm/scripted_llm.py) and its journal of calls."""

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
