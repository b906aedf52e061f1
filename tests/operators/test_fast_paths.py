"""The operators' fast paths give what the plain definitions give, on random texts full of the hard cases.

Each fast path (regex word splitting, character tables, link and e-mail scans word by word, ftfy on the lines it
changes only) is checked against the straightforward computation it replaces.
"""

import random

import ftfy
import pytest

from operators import build_operator
from operators.filters.words import SPECIAL_CHARACTERS, count_chars, refined_words, split_words, strip_chars
from operators.mappers.characters import _WHITESPACE_TO_SPACE, PUNCTUATION_TO_ASCII
from operators.recipe import _common_prefix

PIECES = [
    "word", "Word", "ΣΑΣ", "σ", "İi", "ß", "x1", "12", "3.4.5.6", "10.0.0.1", "fe80:0:0:0:0:0:0:1", "::", "a@b.org",
    "mail.me+x@site.co.uk", "@", "http://x.org/a?b=1", "HTTPS://WWW.A.COM/", "www.site.com", "wWw3.x.org",
    "example.com/path", "a.b/", "ftp:x", "(x)", "<b>", "&amp;", "&eacute;", "&nope", "a;", "\u00a0", "\u200b",
    "\u2003", "\u3000", "\x1c", "\x1f", "\x07", "\r\n", "\r", "\n", "\t", " ", "  ", "😀", "👍🏽", "🇫🇷", "\U0001d400",
    "‘quoted’", "“x”", "…", "—", "，", "ﬁ", "Ｆｕｌｌ", "Ã©", "â€™", "\x85", "\ufeff", "\ud800", "-", "--", "_",
    ".", "/", ":", "!", "#",
]


def random_texts(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [""] + ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 40))) for _ in range(count)]


TEXTS = random_texts(3000)


def test_refined_words_equal_split_and_strip():
    for text in TEXTS:
        for lower in (False, True):
            expected = [w for w in (strip_chars(w.lower() if lower else w) for w in split_words(text)) if w]
            assert refined_words(text, lower_case=lower) == expected, repr(text)


def test_character_counts_equal_per_character_tests():
    texts = [t for t in TEXTS if "\ud800" not in t]  # a lone surrogate cannot be joined for the check below
    assert count_chars(texts, "alnum") == [sum(c.isalnum() for c in t) for t in texts]
    assert count_chars(texts, "special") == [sum(c in SPECIAL_CHARACTERS for c in t) for t in texts]
    assert count_chars(["a\ud800b"], "alnum") == [2]


@pytest.mark.parametrize("name", ["clean_links_mapper", "clean_email_mapper", "clean_ip_mapper"])
def test_pattern_mappers_equal_the_whole_text_substitution(name):
    op = build_operator(name, {"repl": "<X>"})
    for text in TEXTS:
        assert op.process_text(text) == op._regex.sub("<X>", text), repr(text)


def test_fix_unicode_equals_ftfy():
    for normalization in ("NFC", "NFKC"):
        op = build_operator("fix_unicode_mapper", {"normalization": normalization})
        for text in TEXTS:
            assert op.process_text(text) == ftfy.fix_text(text, normalization=normalization), repr(text)


def test_translation_mappers_skip_only_texts_they_leave_alone():
    whitespace, punctuation = build_operator("whitespace_normalization_mapper"), \
        build_operator("punctuation_normalization_mapper")
    for text in TEXTS:
        assert whitespace.process_text(text) == text.strip().translate(_WHITESPACE_TO_SPACE), repr(text)
        assert punctuation.process_text(text) == text.translate(PUNCTUATION_TO_ASCII), repr(text)


def test_common_prefix():
    for a, b in [("", ""), ("abc", "abd"), ("abc", "abc"), ("abc", "ab"), ("x", "y"), ("same" * 50, "same" * 50 + "!")]:
        expected = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        assert _common_prefix(a, b) == expected
