"""Character-level mappers: Unicode repair, punctuation, white space, invisible characters, width, emoji."""

from __future__ import annotations

import re
from typing import Literal

import emoji
import regex
from ftfy import TextFixerConfig, fix_and_explain
from ftfy.chardata import CONTROL_CHARS, HTML_ENTITY_RE
from pydantic import Field, field_validator

from operators.base import Mapper, OperatorParams
from operators.filters.words import VARIOUS_WHITESPACES
from operators.registry import register


@register("fix_unicode_mapper")
class FixUnicodeMapper(Mapper):
    """Repair mojibake and broken Unicode with ftfy, then apply a Unicode normalization form."""

    class Params(OperatorParams):
        normalization: Literal["NFC", "NFKC", "NFD", "NFKD"] | None = Field(
            None, description="Unicode normalization form; None means NFC (Data-Juicer's default)."
        )

        @field_validator("normalization", mode="before")
        @classmethod
        def _upper(cls, value):
            return value.upper() if isinstance(value, str) and value else None

    def process_text(self, text: str) -> str:
        return fix_text(text, self.params.normalization or "NFC")


# The ASCII characters that one of ftfy's fixes changes: the control characters it removes and '\r' (a line break)
_ASCII_FTFY_FIXES = re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(CONTROL_CHARS) if c < 128) + "\r]")


def _unchanged_by_ftfy(segment: str, unescape_html: bool | str) -> bool:
    """ASCII with nothing ftfy fixes in ASCII (no mojibake, width, quotes or normalization to fix there)."""
    return segment.isascii() and not _ASCII_FTFY_FIXES.search(segment) and not (
        unescape_html and HTML_ENTITY_RE.search(segment))


def fix_text(text: str, normalization: str) -> str:
    """`ftfy.fix_text(text, normalization=...)`, which fixes line by line, with the lines it leaves alone skipped."""
    config = TextFixerConfig(explain=False, normalization=normalization)
    if _unchanged_by_ftfy(text, config.unescape_html):
        return text
    parts, position = [], 0
    while position < len(text):  # ftfy.fix_text's loop (ftfy 6.3)
        end = min(text.find("\n", position) + 1 or len(text), position + config.max_decode_length)
        segment = text[position:end]
        if config.unescape_html == "auto" and "<" in segment:  # from here on, as ftfy does
            config = config._replace(unescape_html=False)
        parts.append(segment if _unchanged_by_ftfy(segment, config.unescape_html)
                     else fix_and_explain(segment, config).text)
        position = end
    return "".join(parts)


# Data-Juicer's table: Chinese/typographic punctuation → ASCII.
PUNCTUATION_TO_ASCII = str.maketrans({
    "，": ",", "。": ".", "、": ",", "„": '"', "”": '"', "“": '"', "«": '"', "»": '"', "１": '"',
    "」": '"', "「": '"', "《": '"', "》": '"', "´": "'", "∶": ":", "：": ":", "？": "?", "！": "!",
    "（": "(", "）": ")", "；": ";", "–": "-", "—": " - ", "．": ". ", "～": "~", "’": "'", "…": "...",
    "━": "-", "〈": "<", "〉": ">", "【": "[", "】": "]", "％": "%", "►": "-",
})


@register("punctuation_normalization_mapper")
class PunctuationNormalizationMapper(Mapper):
    """Replace Unicode punctuation (Chinese full stops, curly quotes, dashes, ...) with ASCII punctuation."""

    def process_text(self, text: str) -> str:
        return text if text.isascii() else text.translate(PUNCTUATION_TO_ASCII)  # the table maps no ASCII


_WHITESPACE_TO_SPACE = str.maketrans(dict.fromkeys(VARIOUS_WHITESPACES, " "))
_ODD_WHITESPACE = re.compile("[" + "".join(re.escape(c) for c in sorted(VARIOUS_WHITESPACES - {" "})) + "]")


@register("whitespace_normalization_mapper")
class WhitespaceNormalizationMapper(Mapper):
    """Strip the text and turn every odd space (tab, no-break, zero-width, ideographic, ...) into a plain space."""

    def process_text(self, text: str) -> str:
        text = text.strip()
        return text.translate(_WHITESPACE_TO_SPACE) if _ODD_WHITESPACE.search(text) else text


# Format (Cf: zero-width, bidi marks, soft hyphen, BOM), control (Cc), private use (Co) and unassigned (Cn).
_INVISIBLE = r"\p{Cc}\p{Cf}\p{Co}\p{Cn}"


@register("remove_invisible_characters_mapper")
class RemoveInvisibleCharactersMapper(Mapper):
    """Remove invisible and control characters (zero-width, bidi marks, soft hyphens, BOM, C0/C1 controls)."""

    class Params(OperatorParams):
        keep_newlines_and_tabs: bool = Field(True, description="Keep \\n, \\r and \\t (layout).")
        keep_zero_width_joiner: bool = Field(True, description="Keep U+200D, which builds emoji sequences.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        keep = ("\\n\\t\\r" if self.params.keep_newlines_and_tabs else "") + (
            "\\u200d" if self.params.keep_zero_width_joiner else ""
        )
        self._pattern = regex.compile(f"[[{_INVISIBLE}]--[{keep}]]" if keep else f"[{_INVISIBLE}]", regex.V1)

    def process_text(self, text: str) -> str:
        return self._pattern.sub("", text)


@register("fullwidth_to_halfwidth_mapper")
class FullwidthToHalfwidthMapper(Mapper):
    """Turn full-width ASCII forms (ＡＢＣ１２３！) and the ideographic space into their half-width forms."""

    class Params(OperatorParams):
        convert_space: bool = Field(True, description="Also turn the ideographic space U+3000 into a space.")

    def process_text(self, text: str) -> str:
        chars = []
        for char in text:
            code = ord(char)
            if 0xFF01 <= code <= 0xFF5E:  # full-width block mirrors ASCII 0x21-0x7E
                char = chr(code - 0xFEE0)
            elif code == 0x3000 and self.params.convert_space:
                char = " "
            chars.append(char)
        return "".join(chars)


@register("remove_emoji_mapper")
class RemoveEmojiMapper(Mapper):
    """Remove emoji (including skin tones, flags and ZWJ sequences), using the `emoji` package's data."""

    class Params(OperatorParams):
        repl: str = Field("", description="Replacement for every emoji.")

    def process_text(self, text: str) -> str:
        if text.isascii():  # fast path: every emoji lies outside ASCII
            return text
        return emoji.replace_emoji(text, replace=self.params.repl)


@register("remove_specific_chars_mapper")
class RemoveSpecificCharsMapper(Mapper):
    """Remove every occurrence of the given characters (by default decorative bullets and shapes)."""

    class Params(OperatorParams):
        chars_to_remove: str | list[str] = Field(
            "◆●■►▼▲▴∆▻▷❖♡□", description="Characters to remove, as a string or a list."
        )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        chars = self.params.chars_to_remove
        self._pattern = re.compile("[" + "".join(re.escape(c) for c in chars) + "]") if chars else None

    def process_text(self, text: str) -> str:
        return self._pattern.sub("", text) if self._pattern else text
