"""Content mappers: repeated sentences, long words, bad substrings, regex replace, non-Chinese characters."""

from __future__ import annotations

import sys

import regex
from pydantic import Field, field_validator, model_validator

from operators.base import Mapper, OperatorParams
from operators.filters.words import join_lines_tabs_words, split_lines_tabs_words, strip_chars
from operators.mappers.web import compile_pattern
from operators.registry import register

# Data-Juicer's sentence splitter: break after ., 。, !, ？ (and ellipses) unless a closing quote follows.
_SENTENCE_BREAKS = [
    (regex.compile(r"([.。！!？\?])([^’”])"), r"\1\n\2"),
    (regex.compile(r"(\.{6})([^’”])"), r"\1\n\2"),
    (regex.compile(r"(\…{2})([^’”])"), r"\1\n\2"),
    (regex.compile(r"([.。!！？\?\.{6}\…{2}][’”])([^’”])"), r"\1\n\2"),
]


def split_sentences(line: str) -> list[str]:
    """Sentences of one line, each keeping its leading space so that joining them restores the line."""
    for pattern, repl in _SENTENCE_BREAKS:
        line = pattern.sub(repl, line)
    return line.split("\n")


_SPECIAL = regex.compile(r"[^a-zA-Z0-9\u4e00-\u9fa5\n\t ]")


@register("remove_repeat_sentences_mapper")
class RemoveRepeatSentencesMapper(Mapper):
    """Remove sentences already seen earlier in the same document (line structure is kept)."""

    class Params(OperatorParams):
        lowercase: bool = Field(False, description="Compare sentences case-insensitively.")
        ignore_special_character: bool = Field(
            True, description="Ignore everything but letters, digits and Chinese characters when comparing."
        )
        min_repeat_sentence_length: int = Field(
            2, ge=0, description="Sentences shorter than this (after the above) are never removed."
        )

    def process_text(self, text: str) -> str:
        seen: set[str] = set()
        new_lines = []
        for line in text.split("\n"):
            kept = []
            for sentence in split_sentences(line) if line else ():
                key = sentence.strip()
                if self.params.lowercase:
                    key = key.lower()
                if self.params.ignore_special_character:
                    key = _SPECIAL.sub("", key)
                if len(key) < self.params.min_repeat_sentence_length:
                    kept.append(sentence)
                elif key not in seen:
                    kept.append(sentence)
                    seen.add(key)
            new_lines.append("".join(kept))
        return "\n".join(new_lines)


@register("remove_long_words_mapper")
class RemoveLongWordsMapper(Mapper):
    """Drop words whose length is outside [min_len, max_len] (a long word is retried without its punctuation)."""

    class Params(OperatorParams):
        min_len: int = Field(1, ge=0, description="Words shorter than this are removed.")
        max_len: int = Field(sys.maxsize, ge=0, description="Words longer than this are removed.")

    def _keep(self, word: str) -> bool:
        low, high = self.params.min_len, self.params.max_len
        if low <= len(word) <= high:
            return True
        return len(word) > high and low <= len(strip_chars(word)) <= high

    def process_text(self, text: str) -> str:
        lines = split_lines_tabs_words(text)
        return join_lines_tabs_words([[[w for w in part if self._keep(w)] for part in line] for line in lines])


@register("remove_words_with_incorrect_substrings_mapper")
class RemoveWordsWithIncorrectSubstringsMapper(Mapper):
    """Drop words containing any of the given substrings (by default URL fragments such as http, www, .com)."""

    class Params(OperatorParams):
        lang: str = Field("en", description="Language of the text (kept for Data-Juicer recipes).")
        tokenization: bool = Field(False, description="Only False is supported: words are split on white space.")
        substrings: list[str] | None = Field(
            None, description="Substrings that condemn a word; None means http, www, .com, href, //."
        )

        @field_validator("tokenization")
        @classmethod
        def _no_tokenizer(cls, value: bool) -> bool:
            if value:
                raise ValueError("tokenization needs a downloaded sentencepiece model; use tokenization: false")
            return value

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._substrings = tuple(self.params.substrings or ("http", "www", ".com", "href", "//"))

    def _keep(self, word: str) -> bool:
        word = strip_chars(word)
        return not any(sub in word for sub in self._substrings)

    def process_text(self, text: str) -> str:
        lines = split_lines_tabs_words(text)
        return join_lines_tabs_words([[[w for w in part if self._keep(w)] for part in line] for line in lines])


@register("replace_content_mapper")
class ReplaceContentMapper(Mapper):
    """Replace matches of one or more regular expressions (DOTALL) with their replacement strings."""

    class Params(OperatorParams):
        pattern: str | list[str] | None = Field(None, description="Regular expression(s) to search for.")
        repl: str | list[str] = Field("", description="Replacement(s): one string for all, or one per pattern.")

        @model_validator(mode="after")
        def _consistent(self):
            patterns = [self.pattern] if isinstance(self.pattern, str) else self.pattern or []
            for pattern in patterns:
                compile_pattern(pattern)
            if isinstance(self.repl, list) and len(self.repl) != len(patterns):
                raise ValueError(f"{len(patterns)} pattern(s) but {len(self.repl)} replacement(s)")
            return self

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        pattern, repl = self.params.pattern, self.params.repl
        patterns = [pattern] if isinstance(pattern, str) else pattern or []
        repls = repl if isinstance(repl, list) else [repl] * len(patterns)
        self._rules = [(compile_pattern(p, regex.DOTALL), r) for p, r in zip(patterns, repls, strict=True)]

    def process_text(self, text: str) -> str:
        for pattern, repl in self._rules:
            text = pattern.sub(repl, text)
        return text


@register("remove_non_chinese_character_mapper")
class RemoveNonChineseCharacterMapper(Mapper):
    """Remove every character that is not a Chinese character (optionally keep letters, digits, punctuation)."""

    class Params(OperatorParams):
        keep_alphabet: bool = Field(True, description="Keep A-Z and a-z.")
        keep_number: bool = Field(True, description="Keep 0-9.")
        keep_punc: bool = Field(True, description="Keep common Chinese and ASCII punctuation.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        allowed = "\u4e00-\u9fa5"
        allowed += "A-Za-z" if self.params.keep_alphabet else ""
        allowed += "0-9" if self.params.keep_number else ""
        if self.params.keep_punc:  # Data-Juicer's pattern, including its one-or-more quantifier
            self._pattern = regex.compile(f"[^{allowed}.， ,\\-。%《*》/•、&＆(—)（+）：？!！“”·]+")
        else:
            self._pattern = regex.compile(f"[^{allowed}]")

    def process_text(self, text: str) -> str:
        return self._pattern.sub("", text)
