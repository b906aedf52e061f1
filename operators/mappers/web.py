"""Web clean-up mappers: HTML, e-mail addresses, links, IP addresses, copyright headers (Data-Juicer names)."""

from __future__ import annotations

import re
from collections.abc import Callable

import regex
from pydantic import Field, field_validator
from selectolax.lexbor import LexborHTMLParser

from operators.base import Mapper, OperatorParams
from operators.registry import register


def compile_pattern(pattern: str, flags: int = 0) -> regex.Pattern:
    """Compile a recipe's pattern; a bad one is a ValueError, so parameter validation reports it."""
    try:
        return regex.compile(raw_pattern(pattern), flags)
    except regex.error as error:
        raise ValueError(f"invalid regular expression {pattern!r}: {error}") from None


def raw_pattern(pattern: str) -> str:
    """Data-Juicer accepts patterns written as r'...' inside YAML strings; unwrap them the same way."""
    if len(pattern) > 2 and pattern[:2] in ("r'", 'r"') and pattern[-1] == pattern[1]:
        return pattern[2:-1]
    return pattern


class PatternParams(OperatorParams):
    pattern: str | None = Field(None, description="Regular expression to replace; None uses the built-in one.")
    repl: str = Field("", description="Replacement for every match (empty removes it).")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            compile_pattern(pattern)
        return pattern


class _PatternMapper(Mapper):
    Params = PatternParams
    default_pattern: str = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        pattern = self.params.pattern
        self._regex = compile_pattern(pattern if pattern is not None else self.default_pattern, regex.DOTALL)

    def process_text(self, text: str) -> str:
        return self._regex.sub(self.params.repl, text)


_NON_SPACE_RUN = re.compile(r"\S*")
_SPACE_ONLY_FOR_STR = re.compile("[\x1c-\x1f]")  # white space to str.isspace, not to the regex module's \s


def sub_in_words(pattern: regex.Pattern, repl: str, text: str, next_trigger: Callable[[int], int]) -> str:
    """`pattern.sub(repl, text)`, run only on the white-space-delimited words that hold a trigger.

    For a pattern whose matches hold no white space and a trigger each (`next_trigger(start)`: the position of
    the next one from `start`, or -1), and whose look-arounds see white space like the text's ends: the same
    result as on the whole text, without scanning it with the (slow) pattern."""
    if _SPACE_ONLY_FOR_STR.search(text):
        return pattern.sub(repl, text)
    parts, done = [], 0
    position = next_trigger(0)
    while position >= 0:
        start = position
        while start > done and not text[start - 1].isspace():
            start -= 1
        end = _NON_SPACE_RUN.match(text, position).end()
        parts += [text[done:start], pattern.sub(repl, text[start:end])]
        done = end
        position = next_trigger(end)
    return "".join(parts) + text[done:] if parts else text


@register("clean_email_mapper")
class CleanEmailMapper(_PatternMapper):
    """Remove or replace e-mail addresses."""

    default_pattern = r"[A-Za-z0-9.\-+_]+@[a-z0-9.\-+_]+\.[a-z]+"

    def process_text(self, text: str) -> str:
        if self.params.pattern is not None:
            return super().process_text(text)
        return sub_in_words(self._regex, self.params.repl, text, lambda start: text.find("@", start))


_WWW = re.compile("[wW]{3}")


@register("clean_links_mapper")
class CleanLinksMapper(_PatternMapper):
    """Remove or replace URLs and other web links."""

    # Data-Juicer's pattern with the same matches (checked by fuzzing against it), rewritten so that it runs in
    # linear time: each alternative is tried only at the one start in a run of letters/dots where Data-Juicer's
    # first (and deciding) attempt would be, the bare domain is read possessively (no backtracking, then a
    # look-behind for the ".com" part), and the URL body repeats single characters instead of nesting `+`.
    # Data-Juicer's version takes 31 s on "a." * 4000 (cubic backtracking).
    default_pattern = (
        r"(?i)\b("
        # "http:", "ftp://": only at the first letter of a [\w-] run that could start a scheme
        r"(?:(?=[a-z])(?<!\b[a-z][\w-]*?)[a-z][\w-]+:(?:\/{1,3}|[a-z0-9%])"
        r"|www\d{0,3}[.]"
        # "example.com/": only at the start of a run (or after a word character the run is glued to);
        # the run is X.tld with X not empty, followed by "/"
        r"|(?:(?<![a-z0-9][.\-]*)|(?<=[^\W0-9a-z][0-9a-z]+))"
        r"(?![.][a-z]{2,4}\/)(?=[a-z0-9\-]*+[.])[a-z0-9.\-]++(?<=[.][a-z]{2,4})\/)"
        r"(?:[^\s()<>]|\(([^\s()<>]+|(\([^\s()<>]+\)))*\))"
        r"+(?:\(([^\s()<>]+|(\([^\s()<>]+\)))*\)|[^\s`!()\[\]{};:\'\".,<>?«»“”‘’])"
        r")"
    )

    def process_text(self, text: str) -> str:
        if self.params.pattern is not None:
            return super().process_text(text)
        lowered = text.lower() if text.isascii() else None  # same positions as `text` when ASCII

        def next_trigger(start: int) -> int:  # every link holds a ':', a '/' or 'www' (any case)
            www = lowered.find("www", start) if lowered is not None else (
                match.start() if (match := _WWW.search(text, start)) else -1)
            found = [i for i in (text.find(":", start), text.find("/", start), www) if i >= 0]
            return min(found) if found else -1

        return sub_in_words(self._regex, self.params.repl, text, next_trigger)


@register("clean_ip_mapper")
class CleanIpMapper(_PatternMapper):
    """Remove or replace IPv4 and IPv6 addresses."""

    default_pattern = (
        r"(?:(?:1[0-9][0-9]\.)|(?:2[0-4][0-9]\.)|(?:25[0-5]\.)|(?:[1-9][0-9]\.)|(?:[0-9]\.))"
        r"{3}(?:(?:1[0-9][0-9])|(?:2[0-4][0-9])|(?:25[0-5])|(?:[1-9][0-9])|(?:[0-9]))|"
        r"([\da-fA-F]{1,4}:){7}[\da-fA-F]{1,4}"
    )

    def process_text(self, text: str) -> str:
        # an IPv4 address holds a digit, a dot and a digit; an IPv6 one seven colons
        if self.params.pattern is None and _DIGIT_DOT_DIGIT.search(text) is None and text.count(":") < 7:
            return text
        return super().process_text(text)


_DIGIT_DOT_DIGIT = re.compile(r"\.(?<=[0-9]\.)[0-9]")  # starts with the literal dot, which `re` scans for fast


@register("clean_html_mapper")
class CleanHtmlMapper(Mapper):
    """Strip HTML tags and keep the text (list items become '*' bullets), with the lexbor HTML5 parser."""

    def process_text(self, text: str) -> str:
        text = text.replace("<li>", "\n*").replace("</li>", "").replace("<ol>", "\n*").replace("</ol>", "")
        return LexborHTMLParser(text).text()


_C_COMMENT = re.compile(r"/\*[^*]*\*+(?:[^/*][^*]*\*+)*/")
_COPYRIGHT = re.compile("copyright", re.IGNORECASE)


@register("clean_copyright_mapper")
class CleanCopyrightMapper(Mapper):
    """Remove a leading copyright notice: a /* ... */ block mentioning copyright, or leading //, # or -- lines."""

    def process_text(self, text: str) -> str:
        block = _C_COMMENT.search(text)
        if block:  # only the first block comment is considered, as in Data-Juicer
            if _COPYRIGHT.search(block.group()):
                text = text[: block.start()] + text[block.end():]
            return text
        lines = text.split("\n")
        skip = 0
        for line in lines:
            if line.startswith(("//", "#", "--")) or not line:
                skip += 1
            else:
                break
        return "\n".join(lines[skip:]) if skip else text
