"""The Milvus server behind the service goes down: 503s naming it, readiness fails; when it is back, the same
service answers again without a restart."""

import time

from fastapi.testclient import TestClient

from datamate.api_keys import parse_api_keys
from datamate.service import Backend, create_app
from datamate_resources.milvus import MilvusResource
from tests.serve.conftest import KEYS_TEXT, READER_KEY, bearer, build_knowledge_bases
from tests.servers import free_port, kill_process_group, milvus_server

QUERY = {"dataset": "docs", "query": "Which port does the SSH server listen on?", "k": 2}


def test_milvus_server_down_and_back(tmp_path, embeddings):
    port, data = free_port(), tmp_path / "milvus"
    milvus = MilvusResource(provider="server", uri=f"http://127.0.0.1:{port}", timeout_seconds=5)
    app = create_app(Backend(milvus, embeddings), parse_api_keys(KEYS_TEXT, "test keys"), rate=1000, burst=1000)
    with TestClient(app) as api:
        with milvus_server(data, port) as server:
            build_knowledge_bases(milvus, embeddings)
            up = api.post("/v1/search", json=QUERY, headers=bearer(READER_KEY))
            assert up.status_code == 200, up.text
            assert up.json()["mode"] == "dense"  # Milvus 2.3 has no BM25: hybrid is answered with dense search
            assert up.json()["hits"][0]["doc_id"] == "ssh"
            kill_process_group(server)

            started = time.monotonic()
            down = api.post("/v1/search", json=QUERY, headers=bearer(READER_KEY))
            assert down.status_code == 503 and down.headers["Retry-After"] == "5"
            assert f"Milvus server at 127.0.0.1:{port}" in down.json()["detail"]
            assert time.monotonic() - started < 60
            not_ready = api.get("/readyz")
            assert not_ready.status_code == 503 and f"127.0.0.1:{port}" in not_ready.json()["detail"]
            assert api.get("/healthz").status_code == 200
            assert api.get("/v1/datasets", headers=bearer(READER_KEY)).status_code == 503

        with milvus_server(data, port):  # same data directory: the knowledge bases are still there
            assert api.get("/readyz").status_code == 200
            # A restarted server loads the collection again first (longer than the 5 s timeout on a busy
            # machine): 503s naming it until then, then answers, from the same service.
            deadline = time.monotonic() + 180
            while (back := api.post("/v1/search", json=QUERY, headers=bearer(READER_KEY))).status_code == 503:
                assert f"127.0.0.1:{port}" in back.json()["detail"] and time.monotonic() < deadline
                time.sleep(2)
            assert back.status_code == 200 and back.json()["hits"][0]["doc_id"] == "ssh"
