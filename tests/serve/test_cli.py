"""`datamate serve` as its own process: refuses to start open to the network, serves on loopback, never logs keys."""

import subprocess
import sys

import httpx

from tests.serve.conftest import HASHED_KEY, READER_KEY, REPO, SCOPED_KEY, bearer

CLI = [sys.executable, "-c", "import sys; from datamate_assets.cli import main; sys.exit(main())", "serve"]


def run_cli(*args: str, keys: str = "") -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "DATAMATE_API_KEYS": keys}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_refuses_to_start_without_keys_unless_on_loopback():
    done = run_cli("--host", "0.0.0.0", "--port", "1")
    assert done.returncode == 2
    assert "no API keys configured" in done.stderr and "refusing to serve on 0.0.0.0" in done.stderr


def test_a_malformed_key_entry_is_named_without_the_key():
    done = run_cli("--port", "1", keys="good:good-key-0123456789\nbroken:short")
    assert done.returncode == 2
    assert "DATAMATE_API_KEYS: entry 2 (name 'broken'): the key is shorter than 16 characters" in done.stderr
    assert "short" not in done.stderr.replace("shorter", "")


def test_hash_key_prints_the_stored_form():
    done = run_cli("--hash-key", HASHED_KEY)
    assert done.returncode == 0 and done.stdout.startswith("sha256:") and len(done.stdout.strip()) == 7 + 64


def test_served_over_http_without_logging_keys(served):
    url, log = served
    assert httpx.get(f"{url}/readyz").status_code == 200
    found = httpx.post(f"{url}/v1/search", headers=bearer(READER_KEY), timeout=60,
                       json={"dataset": "docs", "query": "Which port does OpenSSH listen on?", "k": 2})
    assert found.status_code == 200 and found.json()["hits"][0]["doc_id"] == "ssh"
    assert httpx.post(f"{url}/v1/search", headers=bearer("wrong-key-0123456789"),
                      json={"dataset": "docs", "query": "x"}).status_code == 401
    text = log.read_text()
    assert "with 3 API key(s) (reader, scoped, hashed)" in text and "search key=reader dataset=docs" in text
    for key in (READER_KEY, SCOPED_KEY, HASHED_KEY, "wrong-key-0123456789"):
        assert key not in text
