"""Web collection through the collection stage: the allow-list holds across redirects, the cloud metadata
address is refused even when listed, and size and time limits set pages aside while the run succeeds."""

import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from operators.readers import Reject, fetch_web
from tests.collection.web_server import serve_site
from tests.reliability.collect import collect, collected_metadata


def test_web_source_guards_set_pages_aside_and_the_run_succeeds(tmp_path):
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    with serve_site() as site:
        (datasets / "web.yaml").write_text(textwrap.dedent(f"""\
            name: web
            sources:
              - type: web
                urls: ["{site}/pinning", "{site}/redirect-out", "{site}/redirect-metadata", "{site}/big",
                       "{site}/slow", "http://169.254.169.254/latest/meta-data/iam/", "file:///etc/passwd"]
                allowed_hosts: ["127.0.0.1", "169.254.169.254"]
                max_bytes: 4000
                timeout_seconds: 1.0
            """))
        result, collected, rejects = collect(datasets / "web.yaml", tmp_path / "storage")
    assert result.success
    assert collected.column("source_uri").to_pylist() == [f"{site}/pinning"]
    reasons = {row["source_uri"]: (row["reason"], row["detail"]) for row in rejects.to_pylist()}
    assert reasons[f"{site}/redirect-out"][0] == "disallowed_url"
    assert "elsewhere.invalid" in reasons[f"{site}/redirect-out"][1]
    assert reasons[f"{site}/redirect-metadata"][0] == "disallowed_url"
    assert reasons["http://169.254.169.254/latest/meta-data/iam/"][0] == "disallowed_url"
    assert reasons["file:///etc/passwd"][0] == "disallowed_url"
    assert reasons[f"{site}/big"][0] == "oversized"
    assert reasons[f"{site}/slow"][0] == "fetch_error"
    assert collected_metadata(result, "web")["inputs"] == 1 + len(reasons) == 7


def test_a_server_dripping_bytes_cannot_hold_a_fetch_past_its_time_limit():
    """One byte every 0.2 s, never finishing a 64 KB read: the time limit must close the connection itself."""
    sent = []

    class Drip(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    sent.append(1)
                    threading.Event().wait(0.2)
            except OSError:  # the client hung up: what we want
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/drip.txt"
        [reject] = list(fetch_web([url], timeout_seconds=1.0))
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert isinstance(reject, Reject) and reject.reason == "fetch_error", reject
    # Hung up after about 1 s (5 bytes), not after the server's whole 100-byte drip.
    assert len(sent) < 50, f"the fetch read {len(sent)} bytes: the time limit did not stop it"
