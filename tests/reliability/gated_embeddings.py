"""An OpenAI-compatible `/v1/embeddings` server (the packaged MiniLM model) with a gate, so a test can stop a run
at a known point inside a stage: while the gate file exists, it lets the number of requests written in the file
through (counting down) and then holds every further request until the file is removed. Each request is
journaled ("ok" or "held") so the test sees when a run is stuck inside the gate.

    python -m tests.reliability.gated_embeddings --port 8011 --gate /tmp/gate --journal /tmp/journal.jsonl
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from datamate_resources.embeddings import MiniLMOnnxEmbeddings


def build_handler(gate: Path, journal: Path):
    model = MiniLMOnnxEmbeddings()
    lock = threading.Lock()

    def passes() -> bool:
        with lock:
            if not gate.exists():
                return True
            left = int(gate.read_text().strip() or 0)
            if left > 0:
                gate.write_text(str(left - 1))
                return True
            return False

    def record(fate: str, texts: int) -> None:
        with lock, open(journal, "a", encoding="utf-8") as out:
            out.write(json.dumps({"t": time.time(), "fate": fate, "texts": texts}) + "\n")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/embeddings":
                return self.reply(404, {"error": {"message": "not found"}})
            texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
            if not passes():
                record("held", len(texts))
                while gate.exists():
                    time.sleep(0.1)
            else:
                record("ok", len(texts))
            vectors = model.embed_documents(texts)
            data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
            self.reply(200, {"object": "list", "data": data, "model": body["model"],
                             "usage": {"prompt_tokens": 0, "total_tokens": 0}})

        def reply(self, status: int, payload: dict) -> None:
            raw = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
            except OSError:  # the caller was killed while held: nobody to answer
                pass

        def log_message(self, *args):
            pass

    return Handler


def read_journal(journal: Path) -> list[dict]:
    if not journal.exists():
        return []
    return [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gate", type=Path, required=True)
    parser.add_argument("--journal", type=Path, required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), build_handler(args.gate, args.journal))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
