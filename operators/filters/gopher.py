"""Gopher quality and repetition rules (Rae et al. 2021, "Scaling Language Models", appendix A).

Rules, defaults and reason names follow datatrove's GopherQualityFilter and GopherRepetitionFilter.
Words come from a regular-expression tokenizer (runs of word characters; runs of punctuation).
"""

from __future__ import annotations

import re
import string
from collections import Counter

from pydantic import Field

from operators.base import Filter, OperatorParams, Stats
from operators.registry import register

WORD_TOKENS = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]+")
PUNCTUATION = frozenset(string.punctuation + "…“”‘’«»–—")
GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


def word_tokens(text: str) -> list[str]:
    return WORD_TOKENS.findall(text)


@register("gopher_quality_filter")
class GopherQualityFilter(Filter):
    """Gopher quality rules: word count and length, '#' and ellipsis ratios, bullets, alphabetic words, stop words."""

    class Params(OperatorParams):
        min_doc_words: int | None = Field(50, description="Fewest non-symbol words.")
        max_doc_words: int | None = Field(100_000, description="Most non-symbol words.")
        min_avg_word_length: float | None = Field(3, description="Smallest mean word length.")
        max_avg_word_length: float | None = Field(10, description="Largest mean word length.")
        max_symbol_word_ratio: float | None = Field(0.1, description="Largest ratio of '#' (or of ellipses) to words.")
        max_bullet_lines_ratio: float | None = Field(0.9, description="Largest share of lines starting with a bullet.")
        max_ellipsis_lines_ratio: float | None = Field(0.3, description="Largest share of lines ending in an ellipsis.")
        max_non_alpha_words_ratio: float | None = Field(
            0.8, description="Smallest share of words with a letter (name kept from Gopher/datatrove)."
        )
        min_stop_words: int | None = Field(2, description="Fewest stop-word occurrences.")
        stop_words: list[str] = Field(list(GOPHER_STOP_WORDS), description="Stop words counted by min_stop_words.")

    def compute_stats(self, text: str) -> Stats:
        words = word_tokens(text)
        content_words = [w for w in words if any(ch not in PUNCTUATION for ch in w)]
        lines = text.splitlines() or [""]
        n_words = max(len(words), 1)
        stop_words = set(self.params.stop_words)
        return {
            "gopher_words": len(content_words),
            "gopher_avg_word_length": sum(map(len, content_words)) / len(content_words) if content_words else 0.0,
            "gopher_hash_ratio": text.count("#") / n_words,
            "gopher_ellipsis_ratio": (text.count("...") + text.count("…")) / n_words,
            "gopher_bullet_lines_ratio": sum(line.lstrip().startswith(("•", "-")) for line in lines) / len(lines),
            "gopher_ellipsis_lines_ratio": sum(line.rstrip().endswith(("...", "…")) for line in lines) / len(lines),
            "gopher_alpha_words_ratio": sum(any(c.isalpha() for c in w) for w in words) / n_words,
            "gopher_stop_words": sum(w.lower() in stop_words for w in words),
        }

    def keep(self, stats: Stats) -> tuple[bool, str]:
        p = self.params
        rules = [
            (p.min_doc_words, stats["gopher_words"] < (p.min_doc_words or 0), "gopher_short_doc", "gopher_words"),
            (p.max_doc_words, stats["gopher_words"] > (p.max_doc_words or 0), "gopher_long_doc", "gopher_words"),
            (p.min_avg_word_length, stats["gopher_avg_word_length"] < (p.min_avg_word_length or 0),
             "gopher_below_avg_threshold", "gopher_avg_word_length"),
            (p.max_avg_word_length, stats["gopher_avg_word_length"] > (p.max_avg_word_length or 0),
             "gopher_above_avg_threshold", "gopher_avg_word_length"),
            (p.max_symbol_word_ratio, stats["gopher_hash_ratio"] > (p.max_symbol_word_ratio or 0),
             "gopher_too_many_hashes", "gopher_hash_ratio"),
            (p.max_symbol_word_ratio, stats["gopher_ellipsis_ratio"] > (p.max_symbol_word_ratio or 0),
             "gopher_too_many_ellipsis", "gopher_ellipsis_ratio"),
            (p.max_bullet_lines_ratio, stats["gopher_bullet_lines_ratio"] > (p.max_bullet_lines_ratio or 0),
             "gopher_too_many_bullets", "gopher_bullet_lines_ratio"),
            (p.max_ellipsis_lines_ratio, stats["gopher_ellipsis_lines_ratio"] > (p.max_ellipsis_lines_ratio or 0),
             "gopher_too_many_end_ellipsis", "gopher_ellipsis_lines_ratio"),
            (p.max_non_alpha_words_ratio, stats["gopher_alpha_words_ratio"] < (p.max_non_alpha_words_ratio or 0),
             "gopher_below_alpha_threshold", "gopher_alpha_words_ratio"),
            (p.min_stop_words, stats["gopher_stop_words"] < (p.min_stop_words or 0),
             "gopher_enough_stop_words", "gopher_stop_words"),
        ]
        for enabled, broken, reason, stat in rules:
            if enabled and broken:  # a rule whose threshold is None or 0 is off, as in datatrove
                return False, f"{reason} ({stat} {stats[stat]:.4g})"
        return True, ""


def _duplicates(elements: list[str]) -> tuple[int, int]:
    """(number of elements seen before, their characters)."""
    seen: set[str] = set()
    count = chars = 0
    for element in elements:
        if element in seen:
            count += 1
            chars += len(element)
        else:
            seen.add(element)
    return count, chars


def _top_ngram_chars(words: list[str], n: int) -> int:
    """Characters covered by the most frequent n-gram (its length times its count)."""
    ngrams = Counter(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
    if not ngrams:
        return 0
    ngram, count = ngrams.most_common(1)[0]
    return len(ngram) * count


def _duplicate_ngram_chars(words: list[str], n: int) -> int:
    """Characters in n-grams that repeat an earlier one, without counting overlapping repeats twice."""
    seen: set[str] = set()
    chars, i = 0, 0
    while i < len(words) - n + 1:
        ngram = "".join(words[i:i + n])
        if ngram in seen:
            chars += len(ngram)
            i += n
        else:
            seen.add(ngram)
            i += 1
    return chars


_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")


@register("gopher_repetition_filter")
class GopherRepetitionFilter(Filter):
    """Gopher repetition rules: duplicate lines and paragraphs, top n-gram share, duplicated n-gram share."""

    class Params(OperatorParams):
        dup_line_frac: float | None = Field(0.3, description="Largest share of duplicate lines.")
        dup_para_frac: float | None = Field(0.3, description="Largest share of duplicate paragraphs.")
        dup_line_char_frac: float | None = Field(0.2, description="Largest share of characters in duplicate lines.")
        dup_para_char_frac: float | None = Field(0.2, description="Largest share of characters in duplicate paras.")
        top_n_grams: list[tuple[int, float]] = Field(
            [(2, 0.2), (3, 0.18), (4, 0.16)], description="(n, largest share of characters in the top n-gram)."
        )
        dup_n_grams: list[tuple[int, float]] = Field(
            [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)],
            description="(n, largest share of characters in duplicated n-grams).",
        )

    def compute_stats(self, text: str) -> Stats:
        length = max(len(text), 1)
        paragraphs = _PARAGRAPHS.split(text.strip())
        lines = _LINES.split(text)
        para_dups, para_chars = _duplicates(paragraphs)
        line_dups, line_chars = _duplicates(lines)
        words = word_tokens(text)
        stats: Stats = {
            "dup_para_frac": para_dups / len(paragraphs),
            "dup_para_char_frac": para_chars / length,
            "dup_line_frac": line_dups / len(lines),
            "dup_line_char_frac": line_chars / length,
        }
        for n, _ in self.params.top_n_grams:
            stats[f"top_{n}_gram_char_frac"] = _top_ngram_chars(words, n) / length
        for n, _ in self.params.dup_n_grams:
            stats[f"duplicated_{n}_n_grams_char_frac"] = _duplicate_ngram_chars(words, n) / length
        return stats

    def keep(self, stats: Stats) -> tuple[bool, str]:
        p = self.params
        limits = [
            ("dup_para_frac", p.dup_para_frac), ("dup_para_char_frac", p.dup_para_char_frac),
            ("dup_line_frac", p.dup_line_frac), ("dup_line_char_frac", p.dup_line_char_frac),
            *((f"top_{n}_gram_char_frac", frac) for n, frac in p.top_n_grams),
            *((f"duplicated_{n}_n_grams_char_frac", frac) for n, frac in p.dup_n_grams),
        ]
        for stat, limit in limits:
            if limit and stats[stat] > limit:
                return False, f"{stat} {stats[stat]:.3g} > {limit:.3g}"
        return True, ""
