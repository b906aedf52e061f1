"""Synthetic web corpus with planted exact and near duplicates (deterministic for a given size and seed).

Documents are English word salad drawn with real word frequencies (wordfreq), wrapped in typical web noise
that a cleaning recipe must remove: HTML, e-mails, links, IPs, copyright lines, share/cookie boilerplate,
odd spaces, mojibake, plus junk and non-English documents that filters must drop.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from wordfreq import top_n_list, word_frequency

BOILERPLATE = [
    "Share this article on Facebook",
    "Subscribe to our newsletter for weekly updates",
    "We use cookies to improve your experience. Accept all cookies",
    "Click here to read more",
    "All rights reserved.",
]
EXACT_SHARE, NEAR_SHARE, JUNK_SHARE, FOREIGN_SHARE = 0.08, 0.10, 0.04, 0.03


@dataclass
class Corpus:
    table: pa.Table  # collected-stage columns
    near_pairs: np.ndarray  # (k, 2) row indices of planted near-duplicate pairs (same family)
    exact_pairs: np.ndarray  # (k, 2) row indices of planted exact (modulo case/space) duplicates


class _Words:
    def __init__(self, lang: str, size: int, rng: np.random.Generator):
        self.words = np.array(top_n_list(lang, size))
        freq = np.array([word_frequency(w, lang) for w in self.words])
        self.cdf = np.cumsum(freq) / freq.sum()
        self.rng = rng

    def sample(self, n: int) -> np.ndarray:
        return self.words[np.searchsorted(self.cdf, self.rng.random(n), side="right").clip(max=len(self.words) - 1)]


def _paragraphs(words: _Words, rng) -> list[list[str]]:
    paragraphs = []
    for _ in range(rng.integers(2, 6)):
        sentences = []
        for _ in range(rng.integers(2, 6)):
            tokens = list(words.sample(int(rng.integers(6, 22))))
            tokens[0] = tokens[0].capitalize()
            sentences.append(" ".join(tokens) + ".")
        paragraphs.append(sentences)
    return paragraphs


def _add_noise(paragraphs: list[list[str]], rng) -> str:
    lines = [" ".join(p) for p in paragraphs]
    if rng.random() < 0.3:
        lines = [f"<p>{line}</p>" for line in lines]
        lines.insert(0, '<div class="nav"><a href="/home">Home</a> &amp; <b>News</b></div>')
    if rng.random() < 0.2:
        lines.append(f"Contact: user{rng.integers(1e6)}@example.com for details.")
    if rng.random() < 0.3:
        i = int(rng.integers(len(lines)))
        lines[i] += f" See https://www.site{rng.integers(1e4)}.com/page?id={rng.integers(1e6)} now."
    if rng.random() < 0.05:
        lines.append(f"Server 10.{rng.integers(255)}.{rng.integers(255)}.{rng.integers(255)} responded.")
    if rng.random() < 0.1:
        lines.append(f"Copyright (c) {rng.integers(1995, 2025)} Example Media Inc. All rights reserved.")
    if rng.random() < 0.3:
        lines.extend(rng.choice(BOILERPLATE, size=2, replace=False))
    text = "\n".join(lines)
    if rng.random() < 0.2:
        text = text.replace(" ", "\u00a0", 3).replace(".", ".\u200b", 2)
    if rng.random() < 0.05:
        text = text.replace("'", "\u2019").encode("utf-8").decode("latin-1", errors="ignore")
    return text


def _junk(rng) -> str:
    kind = rng.integers(3)
    if kind == 0:
        return "Buy now!!! " * int(rng.integers(3, 30))
    if kind == 1:
        return "#### $$$ %%% @@@ " * int(rng.integers(5, 20))
    return "ok"


def _near_variant(text: str, words: _Words, rng) -> str:
    """Replace a random share (0.2% to 6%) of the words: 5-shingle Jaccard to the original spreads ~0.4-0.98."""
    tokens = text.split(" ")
    n_edits = max(1, int(len(tokens) * rng.uniform(0.002, 0.06)))
    for i, word in zip(rng.choice(len(tokens), size=n_edits, replace=False), words.sample(n_edits), strict=True):
        tokens[i] = word
    return " ".join(tokens)


def generate(n_docs: int, seed: int = 0) -> Corpus:
    rng = np.random.default_rng(seed)
    english = _Words("en", 20000, rng)
    foreign = [_Words(lang, 5000, rng) for lang in ("de", "fr")]
    texts: list[str] = []
    near_pairs, exact_pairs = [], []
    while len(texts) < n_docs:
        roll = rng.random()
        if roll < JUNK_SHARE:
            texts.append(_junk(rng))
        elif roll < JUNK_SHARE + FOREIGN_SHARE:
            texts.append(_add_noise(_paragraphs(foreign[int(rng.integers(2))], rng), rng))
        elif roll < JUNK_SHARE + FOREIGN_SHARE + EXACT_SHARE and texts:
            original = int(rng.integers(len(texts)))
            copy = texts[original]
            if rng.random() < 0.5:  # same after case/whitespace normalization
                copy = copy.upper() if rng.random() < 0.5 else copy.replace(" ", "  ", 5)
            exact_pairs.append((original, len(texts)))
            texts.append(copy)
        else:
            base = len(texts)
            texts.append(_add_noise(_paragraphs(english, rng), rng))
            if rng.random() < NEAR_SHARE / (1 - JUNK_SHARE - FOREIGN_SHARE - EXACT_SHARE):
                family = [base]
                for _ in range(int(rng.integers(1, 4))):
                    family.append(len(texts))
                    texts.append(_near_variant(texts[base], english, rng))
                near_pairs += [(a, b) for i, a in enumerate(family) for b in family[i + 1:]]
    texts = texts[:n_docs]
    near = np.array([p for p in near_pairs if p[1] < n_docs], dtype=np.int64).reshape(-1, 2)
    exact = np.array([p for p in exact_pairs if p[1] < n_docs], dtype=np.int64).reshape(-1, 2)
    now = datetime.now(UTC)
    table = pa.table({
        "doc_id": [hashlib.sha256(t.encode()).hexdigest() for t in texts],
        "text": texts,
        "source_uri": [f"https://bench.example/doc/{i}" for i in range(n_docs)],
        "mime_type": ["text/html"] * n_docs,
        "title": [t[:40] for t in texts],
        "collected_at": pa.array([now] * n_docs, type=pa.timestamp("us", tz="UTC")),
        "metadata": [json.dumps({"row": i}) for i in range(n_docs)],
    })
    return Corpus(table, near, exact)


def load_or_generate(n_docs: int, cache_dir: Path, seed: int = 0) -> Corpus:
    """Generating 1M documents takes minutes, so corpora are cached as Parquet + a JSON of planted pairs."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    data, truth = cache_dir / f"corpus-{n_docs}-{seed}.parquet", cache_dir / f"corpus-{n_docs}-{seed}.json"
    if data.exists() and truth.exists():
        pairs = json.loads(truth.read_text())
        return Corpus(pq.read_table(data), np.array(pairs["near"], dtype=np.int64).reshape(-1, 2),
                      np.array(pairs["exact"], dtype=np.int64).reshape(-1, 2))
    corpus = generate(n_docs, seed)
    pq.write_table(corpus.table, data)
    truth.write_text(json.dumps({"near": corpus.near_pairs.tolist(), "exact": corpus.exact_pairs.tolist()}))
    return corpus
