"""Heuristic dataset metrics: cheap, deterministic, no model calls.

Texts are tokenized as words for space-separated scripts and as single characters for CJK, so distinct-n
and lengths mean the same thing for English and Chinese.
"""

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import cache

import numpy as np
from lingua import LanguageDetectorBuilder

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"  # kana, CJK ideographs, hangul
_TOKEN = re.compile(f"[{_CJK}]|[^\\W{_CJK}]+")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.casefold())


def normalize(text: str) -> str:
    """Case-, width- and whitespace-insensitive form used to count exact duplicates."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def funnel(stage_counts: dict[str, int]) -> list[dict]:
    """Rows per stage in pipeline order, with the share kept from the previous stage and from the first."""
    rows, first, previous = [], None, None
    for stage, count in stage_counts.items():
        first = count if first is None else first
        rows.append({
            "stage": stage,
            "rows": count,
            "kept_from_previous": round(count / previous, 4) if previous else None,
            "kept_from_first": round(count / first, 4) if first else None,
        })
        previous = count
    return rows


def length_stats(texts: Sequence[str]) -> dict[str, float]:
    """Token-length distribution summary (tokens as in `tokens`)."""
    lengths = np.array([len(tokens(text)) for text in texts], dtype=float)
    if lengths.size == 0:
        return {"count": 0}
    p10, p50, p90 = np.percentile(lengths, [10, 50, 90])
    return {
        "count": int(lengths.size), "mean": round(float(lengths.mean()), 2), "min": int(lengths.min()),
        "p10": float(p10), "p50": float(p50), "p90": float(p90), "max": int(lengths.max()),
    }


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Unique n-grams over all n-grams across the texts (Li et al. 2016); 0.0 when there are none."""
    total, unique = 0, set()
    for text in texts:
        words = tokens(text)
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def duplicate_rate(texts: Sequence[str]) -> float:
    """Share of texts that repeat an earlier one after normalization."""
    if not texts:
        return 0.0
    return 1 - len({normalize(text) for text in texts}) / len(texts)


def detect_language(text: str) -> str:
    """ISO 639-1 code of the text's language, `unknown` when lingua is unsure."""
    return _code(_language_detector().detect_language_of(text))


def language_mix(texts: Iterable[str]) -> dict[str, int]:
    """Count of texts per detected language (as `detect_language`)."""
    languages = _language_detector().detect_languages_in_parallel_of(list(texts))
    return dict(Counter(_code(language) for language in languages).most_common())


def _code(language) -> str:
    return language.iso_code_639_1.name.lower() if language else "unknown"


@cache
def _language_detector():
    # Low-accuracy mode keeps all languages at a fraction of the memory; fine for a dataset-level mix.
    return LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().build()


def label_distribution(labels: Iterable[str | None]) -> dict[str, int]:
    return dict(Counter("(none)" if label is None else str(label) for label in labels).most_common())


def flagged_word_rate(texts: Sequence[str], flagged_words: Iterable[str]) -> tuple[float, dict[str, int]]:
    """(share of texts containing a flagged word, how many texts contain each word that occurs)."""
    words = {normalize(word) for word in flagged_words if word.strip()}
    if not texts or not words:
        return 0.0, {}
    hits, flagged_texts = Counter(), 0
    for text in texts:
        found = _flagged_in(normalize(text), words)
        flagged_texts += bool(found)
        hits.update(found)
    return flagged_texts / len(texts), dict(hits.most_common())


def _flagged_in(text: str, words: set[str]) -> set[str]:
    text_tokens = tokens(text)
    found = words & set(text_tokens)
    # Multi-token words (and CJK words, tokenized per character) are matched as substrings.
    found |= {word for word in words if len(tokens(word)) > 1 and word in text}
    return found
