"""`datamate search`: ask a dataset's knowledge base from the shell.

    datamate search "How do I pin a package?" --dataset debian_docs [--k 5] [--json]
    datamate search --dataset debian_docs --queries questions.jsonl [--k 5]   # one {"q": ...} per line

With --queries (or --json) each query gives one JSON line: {"q": ..., "hits": [{chunk_id, doc_id, text,
source_uri, score}, ...]}. Uses the same Milvus and embeddings as the code location (DATAMATE_* variables);
with Milvus Lite the command waits while a run holds the database (one process at a time).
"""

import json
import sys
from pathlib import Path

HIT_FIELDS = ["chunk_id", "doc_id", "text", "source_uri", "score"]


def register(subparsers) -> None:
    parser = subparsers.add_parser("search", help="Search a dataset's knowledge base (Milvus)")
    parser.add_argument("question", nargs="?", help="The question (or use --queries)")
    parser.add_argument("--dataset", required=True, help="Dataset name (its `indexed` asset must be materialized)")
    parser.add_argument("--k", type=int, default=5, help="Hits per question (default 5)")
    parser.add_argument("--json", action="store_true", help="One JSON line per question")
    parser.add_argument("--queries", type=Path, help="JSONL file, one query per line in a `q` field")
    parser.set_defaults(func=run)


def read_queries(path: Path) -> list[str]:
    queries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            query = json.loads(line)["q"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: expected a JSON object with a `q` field ({error!r})") from error
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"{path}:{number}: field `q` must be a non-empty string")
        queries.append(query)
    return queries


def run(args) -> int:
    from datamate_resources.milvus import MilvusUnavailableError, open_knowledge_base

    if bool(args.question) == bool(args.queries):
        print("error: give either a QUESTION or --queries FILE.jsonl", file=sys.stderr)
        return 2
    try:
        queries = read_queries(args.queries) if args.queries else [args.question]
        with open_knowledge_base(args.dataset) as knowledge_base:
            results = knowledge_base.search(queries, k=args.k)
    except (ValueError, OSError, LookupError, MilvusUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for query, hits in zip(queries, results, strict=True):
        hits = [{field: hit[field] for field in HIT_FIELDS} for hit in hits]
        if args.json or args.queries:
            print(json.dumps({"q": query, "hits": hits}, ensure_ascii=False))
            continue
        print(f"Q: {query}")
        for rank, hit in enumerate(hits, start=1):
            text = " ".join(hit["text"].split())
            print(f"{rank}. [{hit['score']:.4f}] {hit['source_uri']}  ({hit['chunk_id'][:12]})\n   {text[:300]}")
    return 0
