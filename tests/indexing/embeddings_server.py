"""A small OpenAI-compatible `/v1/embeddings` server for the tests, serving the packaged local model.

It answers the first request with 503 (to exercise the client's retries) and requires `Bearer <key>` when
started with a key. Usage: python embeddings_server.py PORT [KEY]
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from datamate_resources.embeddings import MiniLMOnnxEmbeddings

MODEL = MiniLMOnnxEmbeddings()
KEY = sys.argv[2] if len(sys.argv) > 2 else None
state = {"requests": 0}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        state["requests"] += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if KEY and self.headers.get("Authorization") != f"Bearer {KEY}":
            return self.reply(401, {"error": {"message": "bad key"}})
        if self.path != "/v1/embeddings":
            return self.reply(404, {"error": {"message": "not found"}})
        if state["requests"] == 1:
            return self.reply(503, {"error": {"message": "warming up"}})
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vectors = MODEL.embed_documents(texts)
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        self.reply(200, {"object": "list", "data": data, "model": body["model"],
                         "usage": {"prompt_tokens": 0, "total_tokens": 0}})

    def reply(self, status: int, payload: dict) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
