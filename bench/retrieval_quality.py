"""Retrieval quality on real FAQs: which configuration puts the right answer in the top 5.

    .venv/bin/python -m bench.retrieval_quality [--cache .datamate/faq] [--configs baseline,markdown,...]

Two question sets, each an FAQ whose questions are kept apart from the pages that get indexed, built from what
Debian packages ship (`apt-get download`, unpacked with `dpkg-deb -x`; nothing else is fetched):
- independent check: the Python FAQ (`python3.11-doc`, faq/*.html) and the Debian FAQ (`debian-faq`,
  *.en.html): every heading that asks a question, its answer the text up to the next heading.
- comparison corpus: the SQLite FAQ (`sqlite3-doc`, faq.html) and the Git FAQ (`git-doc`, gitfaq.html).
The index/table-of-contents pages are left out (they list every question and answer none).

For each configuration, each set is one dataset run as the platform runs it: folder source over the pages ->
collected -> cleaned -> chunks -> indexed (Milvus Lite, MiniLM int8) -> `retrieval_eval` with the questions
(`index.checks.questions`), which judges a hit right when it holds the answer's text
(operators/evaluation/retrieval.py). The search-time levers (dense, BM25, RRF, weighted fusion and its weights)
are then measured on the same knowledge base. Reference row: the same embedding model ranking the answer
passages alone (no page, no chunking), the ceiling the issue compares with. `--rerank N` compares the default
search with and without LLM re-ranking (`datamate.rerank`) on each set's first N questions.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import lxml.html
import numpy as np

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"python3.11-doc": "usr/share/doc/python3.11/html/faq", "debian-faq": "usr/share/doc/debian/FAQ",
            "sqlite3-doc": "usr/share/doc/sqlite3", "git-doc": "usr/share/doc/git-doc"}
HEADING = re.compile(r"<h([1-6])\b[^>]*>(.*?)</h\1>", re.S | re.I)
NUMBERING = re.compile(r"^\s*(\(\d+\)|\d+(\.\d+)*\.)\s*")  # "7.1. ", "(3) "
K = 5

# Index-time configurations: what a spec's `index` section and the source's html_format say.
CONFIGS = {
    "baseline": {"html_format": "text", "index": {"splitter": "recursive", "chunk_size": 800, "chunk_overlap": 100}},
    "markdown": {"html_format": "markdown", "index": {"splitter": "markdown", "chunk_size": 800, "chunk_overlap": 100}},
    "markdown+context": {"html_format": "markdown", "index": {"splitter": "markdown", "chunk_size": 800,
                                                              "chunk_overlap": 100, "heading_context": True}},
    "text+context": {"html_format": "text", "index": {"splitter": "recursive", "chunk_size": 800,
                                                      "chunk_overlap": 100, "heading_context": True}},
    "markdown+context 400": {"html_format": "markdown", "index": {"splitter": "markdown", "chunk_size": 400,
                                                                  "chunk_overlap": 50, "heading_context": True}},
    "text+context 1200": {"html_format": "text", "index": {"splitter": "recursive", "chunk_size": 1200,
                                                           "chunk_overlap": 100, "heading_context": True}},
    "text+context 400": {"html_format": "text", "index": {"splitter": "recursive", "chunk_size": 400,
                                                          "chunk_overlap": 50, "heading_context": True}},
    "markdown 1200": {"html_format": "markdown", "index": {"splitter": "markdown", "chunk_size": 1200,
                                                           "chunk_overlap": 100}},
    "markdown+context 1200": {"html_format": "markdown", "index": {"splitter": "markdown", "chunk_size": 1200,
                                                                   "chunk_overlap": 100, "heading_context": True}},
    # Plain text (no Markdown escapes) cut at its `#` heading lines by the markdown splitter.
    "text+markdown+context": {"html_format": "text", "index": {"splitter": "markdown", "chunk_size": 800,
                                                               "chunk_overlap": 100, "heading_context": True}},
    "text+markdown+context 1200": {"html_format": "text", "index": {"splitter": "markdown", "chunk_size": 1200,
                                                                    "chunk_overlap": 100, "heading_context": True}},
}
# Search-time levers, on each knowledge base: (label, search keyword arguments).
SEARCHES = [
    ("dense", {"mode": "dense"}),
    ("BM25", {"mode": "sparse"}),
    ("hybrid RRF", {"mode": "hybrid", "fusion": "rrf"}),
    # Grouping: at most this many hits per page (FAQ pages hold many answers, so it may cost the right one).
    ("hybrid RRF, per_doc 1", {"mode": "hybrid", "fusion": "rrf", "per_doc": 1}),
    ("hybrid RRF, per_doc 2", {"mode": "hybrid", "fusion": "rrf", "per_doc": 2}),
    *[(f"weighted {d:.1f}/{1 - d:.1f}", {"mode": "hybrid", "fusion": "weighted", "weights": (d, round(1 - d, 1))})
      for d in (0.1, 0.3, 0.5, 0.7, 0.9)],
]


# --- the question sets, from Debian packages ------------------------------------------------------------------
def unpack(packages: list[str], cache: Path) -> Path:
    root = cache / "root"
    for package in packages:
        marker = cache / f"{package}.unpacked"
        if marker.exists():
            continue
        debs = cache / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True, capture_output=True)
        deb = next(debs.glob(f"{package}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        marker.touch()
    return root


def text_of(fragment: str) -> str:
    if not fragment.strip():
        return ""
    return " ".join(lxml.html.fragment_fromstring(fragment, create_parent="div").text_content().split())


def question_text(raw: str) -> str:
    return NUMBERING.sub("", text_of(raw).rstrip("¶").strip())


def heading_questions(html: str, source: str) -> list[dict]:
    """Sphinx and DocBook pages: a heading ending in '?' is a question, its answer runs to the next heading."""
    headings = list(HEADING.finditer(html))
    found = []
    for this, following in zip(headings, [*headings[1:], None], strict=True):
        question = question_text(this.group(2))
        if question.endswith("?"):
            answer = text_of(html[this.end() : following.start() if following else len(html)])
            found.append({"question": question, "answer": answer, "source": source})
    return found


def sqlite_questions(html: str, source: str) -> list[dict]:
    parts = re.split(r'<a name="q\d+"></a>', html)[1:]
    found = []
    for part in parts:
        head = re.match(r"\s*<p><b>(.*?)</b></p>(.*)", part, re.S)
        if head:
            body = re.split(r"<hr|</body>", head.group(2))[0]
            found.append({"question": question_text(head.group(1)), "answer": text_of(body), "source": source})
    return found


def git_questions(html: str, source: str) -> list[dict]:
    page = lxml.html.fromstring(html.encode())
    return [{"question": " ".join(dt.text_content().split()), "source": source,
             "answer": " ".join(dt.getnext().text_content().split())}
            for dt in page.xpath("//dt[@class='hdlist1']") if dt.getnext() is not None and dt.getnext().tag == "dd"]


def build_sets(cache: Path) -> dict[str, tuple[Path, Path]]:
    """{set name: (pages folder, questions JSONL)}; questions asked twice (word for word) are kept once."""
    root = unpack(list(PACKAGES), cache)
    layout = {
        "independent": [("python", root / PACKAGES["python3.11-doc"], "*.html", heading_questions),
                        ("debian", root / PACKAGES["debian-faq"], "*.en.html", heading_questions)],
        "comparison": [("sqlite", root / PACKAGES["sqlite3-doc"], "faq.html", sqlite_questions),
                       ("git", root / PACKAGES["git-doc"], "gitfaq.html", git_questions)],
    }
    sets = {}
    for name, parts in layout.items():
        pages, rows, seen = cache / "pages" / name, [], set()
        shutil.rmtree(pages, ignore_errors=True)
        for folder, source_dir, pattern, parse in parts:
            (pages / folder).mkdir(parents=True)
            for page in sorted(source_dir.glob(pattern)):
                if page.name.startswith("index."):
                    continue  # the table of contents: every question, no answer
                shutil.copy(page, pages / folder / page.name)
                for row in parse(page.read_text(encoding="utf-8", errors="replace"), f"{folder}/{page.name}"):
                    if row["question"] not in seen and row["answer"]:
                        seen.add(row["question"])
                        rows.append(row)
        questions = cache / f"{name}.jsonl"
        questions.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        sets[name] = (pages, questions)
    return sets


# --- one configuration through the platform ---------------------------------------------------------------------
def spec_for(dataset: str, pages: Path, questions: Path, config: dict) -> dict:
    return {
        "name": dataset,
        "sources": [{"type": "folder", "path": str(pages), "include": ["**/*.html"],
                     "html_format": config["html_format"]}],
        "cleaning": {"process": [{"text_length_filter": {"min_len": 10}}]},
        "index": {**config["index"], "checks": {"k": K, "questions": str(questions)}},
    }


def run_dataset(spec: dict, home: Path) -> dict:
    """Materialize the dataset's pipeline job in this process on a fresh DATAMATE_HOME; the assets' metadata."""
    import dagster as dg

    from datamate_assets.component import dataset_definitions

    os.environ["DATAMATE_HOME"] = str(home)
    os.environ.pop("DATAMATE_MILVUS_URI", None)
    defs = dataset_definitions(spec)
    job = defs.resolve_job_def(f"{spec['name']}_pipeline")
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=True, run_config={
            "loggers": {"console": {"config": {"log_level": "WARNING"}}}})
    return {event.asset_key.path[-1]: event.materialization.metadata
            for event in result.get_asset_materialization_events()}


def search_levers(dataset: str, questions: Path, embeddings, searches: bool = True, rerank: int = 0) -> dict[str, dict]:
    from datamate_resources.milvus import open_knowledge_base
    from operators.evaluation.retrieval import first_answer_rank, rank_summary, read_questions

    known = read_questions(questions)
    results = {}
    with open_knowledge_base(dataset, embeddings=embeddings) as knowledge_base:
        if rerank:
            results.update(rerank_on_off(knowledge_base, known[:rerank]))
        for label, options in SEARCHES if searches else []:
            found = knowledge_base.search([q.question for q in known], k=K, **options)
            ranks = [first_answer_rank(h, q) for h, q in zip(found, known, strict=True)]
            results[label] = rank_summary(ranks, K)
            if label == "hybrid RRF":  # the default search, per FAQ
                for part in sorted({q.source.split("/")[0] for q in known}):
                    results[f"{label}, {part} FAQ only"] = rank_summary(
                        [r for r, q in zip(ranks, known, strict=True) if q.source.startswith(f"{part}/")], K)
    return results


def rerank_on_off(knowledge_base, known: list) -> dict[str, dict]:
    """The default search (hybrid RRF) with and without LLM re-ranking of its candidates (3k = 15), on `known`:
    the re-ranker the service uses (`datamate.rerank`, the configured LLM: the packaged local model unless
    DATAMATE_LLM_BASE_URL is set)."""
    from datamate.rerank import reranker_from_settings
    from datamate_resources.settings import Settings
    from operators.evaluation.retrieval import first_answer_rank, rank_summary

    reranker = reranker_from_settings(Settings.from_env())
    asked = [q.question for q in known]
    found = knowledge_base.search(asked, k=reranker.candidates(K))
    began = time.perf_counter()
    reranked = reranker.rerank(asked, found, K)
    seconds = time.perf_counter() - began
    kept = sum(r.note is not None for r in reranked)
    # An answer that lists the passages in the order given counts as reordered but changes nothing.
    changed = sum([h["chunk_id"] for h in r.hits] != [h["chunk_id"] for h in hits[:K]]
                  for r, hits in zip(reranked, found, strict=True))
    first = f"first {len(known)} q."
    return {
        f"hybrid RRF, {first}": rank_summary([first_answer_rank(h[:K], q) for h, q in zip(found, known, strict=True)],
                                             K),
        f"hybrid RRF + LLM re-ranking ({reranker.model_name}), {first}": {
            **rank_summary([first_answer_rank(r.hits, q) for r, q in zip(reranked, known, strict=True)], K),
            "note": f"{seconds / max(len(known), 1):.1f} s/query, top {K} changed for {changed}, search order kept "
                    f"for {kept} (model error or unusable answer), load average {os.getloadavg()[0]:.1f}"},
        f"answer among the {reranker.candidates(K)} candidates (re-ranking's ceiling), {first}": {
            **rank_summary([1 if first_answer_rank(h, q) else None for h, q in zip(found, known, strict=True)], K),
            "note": "hit rate only (top-1 and MRR read as if re-ranking were perfect)"},
    }


def answers_alone(questions: Path, model) -> dict:
    """The embedding model over the answer passages only: each question against every answer of its set."""
    from operators.evaluation.retrieval import rank_summary, read_questions

    known = read_questions(questions)
    answers = model.embed_array([q.answer for q in known])
    asked = model.embed_array([q.question for q in known])
    order = np.argsort(-(asked @ answers.T), axis=1)[:, :K]
    ranks = [next((r + 1 for r, j in enumerate(row) if j == i), None) for i, row in enumerate(order)]
    return rank_summary(ranks, K)


def row(label: str, summary: dict, extra: str = "") -> str:
    return (f"| {label} | {summary['questions']} | {summary[f'recall_at_{K}']:.1%} | {summary['recall_at_1']:.1%} | "
            f"{summary['mrr']:.3f} | {extra or summary.get('note', '')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=REPO / ".datamate" / "faq")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {list(CONFIGS)}")
    parser.add_argument("--sets", default="comparison,independent")
    parser.add_argument("--searches", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure the search-time levers on each knowledge base")
    parser.add_argument("--rerank", type=int, default=0, metavar="N",
                        help="also compare the default search with and without LLM re-ranking on the first N "
                             "questions of each set (the configured LLM; slow with the packaged local model)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from datamate_resources.embeddings import EmbeddingsResource

    embeddings = EmbeddingsResource(provider="local").process_config_and_initialize()
    sets = build_sets(args.cache)
    header = "| configuration | questions | top-5 hit rate | top-1 | MRR | notes |\n|---|---|---|---|---|---|"
    for set_name in args.sets.split(","):
        pages, questions = sets[set_name]
        lines = [f"\n{set_name}: {pages} ({sum(1 for _ in open(questions))} questions)", header,
                 row("MiniLM on the answer passages alone (reference)",
                     answers_alone(questions, embeddings.get_embeddings()))]
        print(lines[0], flush=True)
        for config_name in args.configs.split(","):
            config = CONFIGS[config_name]
            dataset = f"faq_{set_name}"
            with tempfile.TemporaryDirectory(prefix="faq-") as home:
                began = time.perf_counter()
                metadata = run_dataset(spec_for(dataset, pages, questions, config), Path(home))
                seconds = time.perf_counter() - began
                evaluation = metadata["retrieval_eval"]
                summary = {"questions": evaluation["questions"].value, "mrr": evaluation["mrr"].value,
                           **{name: value.value for name, value in evaluation.items() if name.startswith("recall_at")}}
                chunks = metadata["chunks"]["chunks"].value
                lines.append(row(f"{config_name} (retrieval_eval)", summary, f"{chunks} chunks, {seconds:.0f} s"))
                print(lines[-1], flush=True)
                if args.searches or args.rerank:
                    for label, lever in search_levers(dataset, questions, embeddings, args.searches,
                                                      args.rerank).items():
                        lines.append(row(f"{config_name}, {label}", lever))
                        print(lines[-1], flush=True)
        print("\n".join(lines), flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
