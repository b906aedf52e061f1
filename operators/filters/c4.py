"""C4 rules (Raffel et al. 2020), as datatrove's C4QualityFilter applies them.

Line rules drop lines (too-long words, no terminal punctuation, too few words, "javascript", cookie and
policy notices; citation marks are removed); document rules drop the document ("lorem ipsum", a curly
bracket, too few sentences left). ``c4_quality_filter`` decides on the document; ``c4_line_filter_mapper``
(in operators/mappers/c4.py) rewrites the text to its kept lines.
"""

from __future__ import annotations

import re

from pydantic import Field

from operators.base import Filter, OperatorParams, Stats
from operators.mappers.content import split_sentences
from operators.registry import register

CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
END_PUNCTUATION = (".", "?", "!", '"', "'")
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


class C4LineParams(OperatorParams):
    remove_citations: bool = Field(True, description="Remove Wikipedia-style citation marks such as [1] or [edit].")
    filter_no_terminal_punct: bool = Field(
        True, description="Drop lines not ending in . ? ! or a quote (or ending in ...)."
    )
    min_words_per_line: int = Field(3, description="Drop lines with fewer words.")
    max_word_length: int = Field(1000, description="Drop lines with a longer word (-1: no limit).")
    filter_javascript: bool = Field(True, description="Drop lines mentioning 'javascript'.")
    filter_policy: bool = Field(True, description="Drop lines with terms-of-use, privacy or cookie notices.")


class C4Params(C4LineParams):
    min_num_sentences: int = Field(5, description="Fewest sentences left to keep the document (-1: no minimum).")
    filter_lorem_ipsum: bool = Field(True, description="Drop documents containing 'lorem ipsum'.")
    filter_curly_bracket: bool = Field(True, description="Drop documents containing a curly bracket.")


def c4_lines(text: str, p: C4LineParams) -> tuple[list[str], int, str]:
    """(kept lines, sentences in them, document-level reason or ""); document rules apply with C4Params only."""
    lorem_ipsum = getattr(p, "filter_lorem_ipsum", False)
    curly_bracket = getattr(p, "filter_curly_bracket", False)
    kept: list[str] = []
    sentences = 0
    for line in text.splitlines():
        line = line.strip()
        words = line.split()
        if p.max_word_length != -1 and any(len(word) > p.max_word_length for word in words):
            continue
        if p.remove_citations:
            line = CITATION.sub("", line)
        if p.filter_no_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith("...")):
            continue
        if len(words) < p.min_words_per_line:
            continue
        lowered = line.lower()
        if lorem_ipsum and "lorem ipsum" in lowered:
            return kept, sentences, "lorem_ipsum"
        if p.filter_javascript and "javascript" in lowered:
            continue
        if curly_bracket and "{" in line:
            return kept, sentences, "curly_bracket"
        if p.filter_policy and any(policy in lowered for policy in POLICY_SUBSTRINGS):
            continue
        sentences += sum(1 for sentence in split_sentences(line) if sentence.strip())
        kept.append(line)
    return kept, sentences, ""


@register("c4_quality_filter")
class C4QualityFilter(Filter):
    """C4 document rules: no 'lorem ipsum', no curly bracket, enough sentences on lines that pass the C4 line rules."""

    Params = C4Params

    def compute_stats(self, text: str) -> Stats:
        kept, sentences, reason = c4_lines(text, self.params)
        return {
            "c4_sentences": sentences,
            "c4_kept_lines": len(kept),
            "c4_lorem_ipsum": float(reason == "lorem_ipsum"),
            "c4_curly_bracket": float(reason == "curly_bracket"),
        }

    def keep(self, stats: Stats) -> tuple[bool, str]:
        if stats["c4_lorem_ipsum"]:
            return False, "lorem_ipsum"
        if stats["c4_curly_bracket"]:
            return False, "curly_bracket"
        if self.params.min_num_sentences != -1 and stats["c4_sentences"] < self.params.min_num_sentences:
            return False, f"too_few_sentences (c4_sentences {stats['c4_sentences']} < {self.params.min_num_sentences})"
        return True, ""
