"""Retrieval quality on known questions: the answer-overlap judge, heading context in chunks, weighted fusion, and
`retrieval_eval` with `index.checks.questions` in process and through the service over HTTP."""

import json
import sys

import dagster as dg
import pyarrow as pa
import pytest

from datamate_assets.indexing import build_defs
from datamate_assets.keys import key
from datamate_assets.spec import DatasetSpec
from datamate_resources.io_manager import DeltaIOManager
from datamate_resources.milvus import KnowledgeBase
from datamate_resources.storage import ObjectStore
from operators.chunking import ChunkingConfig, chunk_documents, split_document
from operators.evaluation.retrieval import (
    KnownQuestion,
    answers,
    first_answer_rank,
    overlap,
    passage,
    rank_summary,
    read_questions,
)
from tests.indexing.conftest import DOCS
from tests.servers import free_port, server_process

ANSWER = "Run dpkg -S /path/to/file for installed packages; apt-file search finds files of packages not installed."
PAGE = "# Package FAQ\n\n## Which package owns a file?\n\n" + ANSWER + "\n\n## How do I pin a version?\n\n" + (
    "Give the package a Pin-Priority above 1000 in /etc/apt/preferences. " * 6)


def test_overlap_counts_a_short_answer_inside_a_chunk_and_a_chunk_inside_a_long_answer():
    long_answer = " ".join(f"word{i}" for i in range(200))
    assert overlap(f"Heading\n\n{ANSWER} And more text after it.", ANSWER) == 1.0
    assert overlap(" ".join(f"word{i}" for i in range(50, 90)), long_answer) == 1.0
    mention = "Every mirror updates its contents index daily, which is why apt-file search finds files quickly there."
    assert 0 < overlap(mention, ANSWER) < 0.5  # a passage that mentions the answer's words is not the answer
    known = KnownQuestion("Which package owns a file?", ANSWER, "faq/packages.html")
    right = {"text": ANSWER, "source_uri": "file:///data/faq/packages.html"}
    assert answers(right, known) and not answers({**right, "source_uri": "file:///data/other.html"}, known)
    assert first_answer_rank([{"text": "nothing", "source_uri": ""}, right], known) == 2
    summary = rank_summary([1, 2, None, None], k=5)
    assert summary["recall_at_5"] == 0.5 and summary["recall_at_1"] == 0.25 and summary["mrr"] == pytest.approx(0.375)


def test_the_heading_context_line_is_not_judged_as_answer_text():
    known = KnownQuestion("Which package owns a file?", " ".join(f"answer{i}" for i in range(100)), "faq.html")
    body = " ".join(f"answer{i}" for i in range(10, 20))
    context = "Package FAQ > Finding files > Which package owns a file on my system right now?"
    headings = json.dumps(context.split(" > "))
    for hit in ({"text": f"{context}\n\n{body}", "headings": headings, "source_uri": "faq.html"},
                {"text": f"{context}\n\n{body}", "metadata": {"headings": headings}, "source_uri": "faq.html"}):
        # as the knowledge base gives it, and as the service does
        assert passage(hit) == body and answers(hit, known)
    assert not answers({"text": f"{context}\n\n{body}", "source_uri": "faq.html"}, known)  # no headings: diluted


def test_read_questions_names_the_bad_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a", "source": "s"}) + "\n\n{\"question\": 1}\n")
    with pytest.raises(ValueError, match="line 3: need a JSON object with question, answer and source"):
        read_questions(path)
    path.write_text(json.dumps({"question": "q", "answer": "a", "source": "s"}) + "\n")
    assert read_questions(path) == [KnownQuestion("q", "a", "s")]


def test_heading_context_carries_title_and_section_into_text_and_headings():
    plain = split_document(PAGE, ChunkingConfig("markdown", 120, 0), title="Package FAQ¶")
    assert all(not text.startswith("Package FAQ >") for text, _ in plain)
    pieces = split_document(PAGE, ChunkingConfig("markdown", 120, 0, heading_context=True), title="Package FAQ¶")
    pin = [(text, headings) for text, headings in pieces if "Pin-Priority" in text]
    assert len(pin) > 1  # the long answer is cut, and every piece says what it answers
    for text, headings in pin:
        assert text.startswith("Package FAQ > How do I pin a version?\n\n")
        assert headings == ["Package FAQ", "How do I pin a version?"]  # the title repeated as h1 is carried once
    assert sum("## " in text for text, _ in pieces) == 0  # heading lines are in the context line, not repeated
    rows = [{"doc_id": "faq", "text": PAGE, "title": "Package FAQ", "source_uri": "file:///faq.md"}]
    table = chunk_documents(rows, ChunkingConfig("markdown", 120, 0, heading_context=True)).chunks
    assert json.loads(table.column("headings")[0].as_py())[0] == "Package FAQ"


def test_weighted_fusion_follows_its_weights(lite, embeddings):
    rows = [{"doc_id": name, "text": text, "source_uri": f"file:///{name}.txt"} for name, text in DOCS.items()]
    with lite.get_client() as client:
        kb = KnowledgeBase(client, "fusion", embeddings.get_embeddings(), embeddings.model_name)
        kb.sync(chunk_documents(rows, ChunkingConfig("recursive", 200, 0)).chunks)
        question = ["Which port does the OpenSSH server listen on?"]
        for weights in ((1.0, 0.0), (0.0, 1.0), (0.5, 0.5)):
            hits = kb.search(question, 3, fusion="weighted", weights=weights)[0]
            assert hits[0]["doc_id"] == "ssh" and hits[0]["rank_score"] >= hits[-1]["rank_score"]
        dense = kb.search(question, 3, mode="dense")[0]
        only_dense = kb.search(question, 3, fusion="weighted", weights=(1.0, 0.0))[0]
        assert [h["chunk_id"] for h in only_dense] == [h["chunk_id"] for h in dense]
        with pytest.raises(ValueError, match="fusion 'max' is not one of"):
            kb.search(question, 3, fusion="max")


def test_retrieval_eval_on_known_questions_in_process_and_through_the_service(tmp_path, lite, embeddings,
                                                                               monkeypatch):
    questions = tmp_path / "questions.jsonl"
    known = [("Which port does the OpenSSH server listen on?", DOCS["ssh"], "ssh.txt"),
             ("Where do kernel parameters go?", DOCS["boot"], "boot.txt"),
             ("Where are the Debian mirrors named?", DOCS["apt"], "apt.txt")]
    questions.write_text("".join(json.dumps({"question": q, "answer": a, "source": s}) + "\n" for q, a, s in known))
    spec = DatasetSpec.model_validate({
        "name": "kb_known", "sources": [{"type": "folder", "path": "unused"}],
        "index": {"splitter": "recursive", "chunk_size": 200, "chunk_overlap": 0, "heading_context": True,
                  "checks": {"k": 3, "min_recall_at_k": 0.6, "questions": str(questions)}},
    })

    @dg.asset(key=key(spec, "cleaned"), group_name=spec.name)
    def cleaned() -> pa.Table:
        return pa.Table.from_pylist([{"doc_id": d, "text": t, "source_uri": f"file:///{d}.txt", "title": d.upper()}
                                     for d, t in DOCS.items()])

    storage = ObjectStore(url=f"file://{tmp_path / 'storage'}")
    resources = {"io_manager": DeltaIOManager(storage=storage), "storage": storage, "milvus": lite,
                 "embeddings": embeddings}
    port, api_key = free_port(), "eval-key-0123456789"
    env = {"DATAMATE_HOME": str(tmp_path), "DATAMATE_MILVUS_URI": lite.path, "DATAMATE_API_KEYS": f"eval:{api_key}"}
    args = [sys.executable, "-c", "import sys; from datamate_assets.cli import main; sys.exit(main())",
            "serve", "--port", str(port)]
    monkeypatch.setenv("DATAMATE_SERVICE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("DATAMATE_SERVICE_API_KEY", api_key)
    # The service opens Milvus Lite per request only, so the run can build the knowledge base meanwhile.
    with server_process(args, port, tmp_path / "serve.log", timeout=180, env=env):
        result = dg.materialize([cleaned, *build_defs(spec).assets], resources=resources)
    assert result.success
    metadata = result.asset_materializations_for_node("kb_known__retrieval_eval")[0].metadata
    assert metadata["questions"].value == 3
    assert metadata["recall_at_3"].value == 1.0 and metadata["mrr"].value > 0.6
    assert metadata["service_recall_at_3"].value == metadata["recall_at_3"].value
    assert metadata["service_mrr"].value == pytest.approx(metadata["mrr"].value)
    check = result.get_asset_check_evaluations()[0]
    assert check.passed and check.check_name == "recall_at_3"
    assert "api_key" not in (tmp_path / "serve.log").read_text() and api_key not in (tmp_path / "serve.log").read_text()
