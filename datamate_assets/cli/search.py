"""`datamate search`: ask a dataset's knowledge base from the shell.

    datamate search "How do I pin a package?" --dataset debian_docs [--k 5] [--per-doc 1] [--mode dense] [--json]
    datamate search --dataset debian_docs --queries questions.jsonl [--k 5]   # one {"q": ...} per line

With --queries (or --json) each query gives one JSON line: {"q": ..., "hits": [{chunk_id, doc_id, text,
source_uri, score}, ...]}. `score` is the cosine similarity of question and chunk (comparable across questions),
printed next to the score that ranked the hits (RRF in hybrid mode). Uses the same Milvus and embeddings as the
code location (DATAMATE_* variables); with Milvus Lite the command waits while a run holds the database (one
process at a time). For other processes and applications, `datamate serve` (docs/serving.md). `--rerank`
re-orders the candidates with the configured LLM when DATAMATE_RERANK_LLM=1 (`datamate.rerank`).
"""

import json
import sys
from pathlib import Path

from datamate_assets.cli.project import find_project

HIT_FIELDS = ["chunk_id", "doc_id", "text", "source_uri", "score"]


def register(subparsers) -> None:
    parser = subparsers.add_parser("search", help="Search a dataset's knowledge base (Milvus)")
    parser.add_argument("question", nargs="?", help="The question (or use --queries)")
    parser.add_argument("--dataset", required=True, help="Dataset name (its `indexed` asset must be materialized)")
    parser.add_argument("--k", type=int, default=5, help="Hits per question (default 5)")
    parser.add_argument("--json", action="store_true", help="One JSON line per question")
    parser.add_argument("--queries", type=Path, help="JSONL file, one query per line in a `q` field")
    parser.add_argument("--mode", choices=["hybrid", "dense", "sparse"], default="hybrid",
                        help="hybrid (dense + BM25, default), dense or sparse (BM25)")
    parser.add_argument("--per-doc", type=int, default=None, help="At most this many hits per document")
    parser.add_argument("--rerank", action="store_true",
                        help="Re-order up to 3k candidates with the LLM (needs DATAMATE_RERANK_LLM=1)")
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
    if bool(args.question) == bool(args.queries):
        print("error: give either a QUESTION or --queries FILE.jsonl", file=sys.stderr)
        return 2
    queries_file = args.queries.resolve() if args.queries else None  # before the project's root becomes the cwd
    settings = find_project().activate()
    if settings.milvus_provider == "local" and not Path(settings.milvus_uri).exists():
        # Opening Milvus Lite would create an empty database (and its folder) where none should be.
        print(f"error: no knowledge base at {settings.milvus_uri} (DATAMATE_MILVUS_URI, or the project state "
              f"{settings.home}): materialize it first with `datamate run {args.dataset} --stages indexed`",
              file=sys.stderr)
        return 1

    from datamate_resources.milvus import MilvusUnavailableError, open_knowledge_base

    reranker = None
    if args.rerank:
        from datamate.rerank import HOW_TO_ENABLE, reranker_from_env
        from datamate_resources.llm import LLMUnavailableError

        try:
            reranker = reranker_from_env(settings)
        except LLMUnavailableError as error:
            print(f"error: the re-ranking LLM is not usable: {error}", file=sys.stderr)
            return 2
        if reranker is None:
            print(f"error: --rerank needs a re-ranking model: {HOW_TO_ENABLE}", file=sys.stderr)
            return 2
    try:
        queries = read_queries(queries_file) if queries_file else [args.question]
        with open_knowledge_base(args.dataset, settings) as knowledge_base:
            found = knowledge_base.search(queries, k=reranker.candidates(args.k) if reranker else args.k,
                                          mode=args.mode, per_doc=args.per_doc)
        # after Milvus Lite is released, so a run is not kept waiting during the LLM calls
        results = [r.hits for r in reranker.rerank(queries, found, args.k)] if reranker else found
    except (ValueError, OSError, LookupError, MilvusUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for query, hits in zip(queries, results, strict=True):
        if args.json or args.queries:
            hits = [{field: hit[field] for field in HIT_FIELDS} for hit in hits]
            print(json.dumps({"q": query, "hits": hits}, ensure_ascii=False))
            continue
        print(f"Q: {query}")
        for hit in hits:
            text = " ".join(hit["text"].split())
            title = f" — {hit['title']}" if hit["title"] else ""
            print(f"{hit['rank']}. [cosine {hit['score']:.3f} | {args.mode} {hit['rank_score']:.4f}] "
                  f"{hit['source_uri']}{title}  ({hit['chunk_id'][:12]})\n   {text[:300]}")
    return 0
