"""LaTeX clean-up mappers (arXiv-style sources): bibliography, comments, headers, plain-text tables."""

from __future__ import annotations

import regex
from pydantic import Field

from operators.base import Mapper, OperatorParams
from operators.registry import register

_BIBLIOGRAPHY = regex.compile(
    r"(\\appendix|\\begin\{references\}|\\begin\{REFERENCES\}|\\begin\{thebibliography\}|\\bibliography\{.*\}).*$",
    regex.DOTALL,
)


@register("remove_bibliography_mapper")
class RemoveBibliographyMapper(Mapper):
    """Cut a LaTeX document at its bibliography or appendix (\\appendix, thebibliography, \\bibliography{...})."""

    def process_text(self, text: str) -> str:
        return _BIBLIOGRAPHY.sub("", text)


_HEADER = regex.compile(
    r"^(.*?)("
    + "|".join(
        rf"\\\b{command}\b\*?(?:\[(.*?)\])?\{{(.*?)\}}"
        for command in ("chapter", "part", "section", "subsection", "subsubsection", "paragraph", "subparagraph")
    )
    + r")",
    regex.DOTALL,
)


@register("remove_header_mapper")
class RemoveHeaderMapper(Mapper):
    """Remove everything before the first LaTeX sectioning command (title block, preamble)."""

    class Params(OperatorParams):
        drop_no_head: bool = Field(True, description="Empty the text when it has no sectioning command at all.")

    def process_text(self, text: str) -> str:
        if not _HEADER.search(text):
            return "" if self.params.drop_no_head else text
        return _HEADER.sub(r"\2", text)


_INLINE_COMMENT = regex.compile(r"[^\\]%.+$", regex.MULTILINE)
_LINE_COMMENT = regex.compile(r"(?m)^%.*\n?", regex.MULTILINE)


@register("remove_comments_mapper")
class RemoveCommentsMapper(Mapper):
    """Remove LaTeX comments: whole comment lines and trailing % comments."""

    class Params(OperatorParams):
        doc_type: str | list[str] = Field("tex", description="Document type(s); only 'tex' is supported.")
        inline: bool = Field(True, description="Remove trailing comments after text on a line.")
        multiline: bool = Field(True, description="Remove lines that are comments.")

    def process_text(self, text: str) -> str:
        if self.params.inline:
            text = _INLINE_COMMENT.sub("", text)
        if self.params.multiline:
            text = _LINE_COMMENT.sub("", text)
        return text


@register("remove_table_text_mapper")
class RemoveTableTextMapper(Mapper):
    """Remove plain-text tables: runs of two or more lines with the same number (min_col..max_col) of columns."""

    class Params(OperatorParams):
        min_col: int = Field(2, ge=2, le=20, description="Fewest columns of a table to remove.")
        max_col: int = Field(20, ge=2, le=20, description="Most columns of a table to remove.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._patterns = [
            regex.compile(rf"(?<=\n)((\S+?)([ |\t](\S+?)){{{columns}}}\n+){{2,}}")
            for columns in range(self.params.min_col - 1, self.params.max_col)
        ]

    def process_text(self, text: str) -> str:
        for pattern in self._patterns:
            text = pattern.sub("", text)
        return text


_MACRO_DEFINITIONS = (
    regex.compile(r"\\\bnewcommand\b\*?\{(\\[a-zA-Z0-9]+?)\}\{(.*?)\}$", regex.MULTILINE),
    regex.compile(r"\\def\s*(\\[a-zA-Z0-9]+?)\s*\{(.*?)\}$", regex.MULTILINE),
)


@register("expand_macro_mapper")
class ExpandMacroMapper(Mapper):
    """Expand a LaTeX document's argument-free macros (\\newcommand{\\x}{...}, \\def\\x{...}) where they are used."""

    def process_text(self, text: str) -> str:
        macros = {}
        for definition in _MACRO_DEFINITIONS:
            for match in definition.finditer(text):
                macros[match.group(1)] = match.group(2)
        for name, value in macros.items():
            # only whole macro names: the name must be followed by a character that cannot continue it
            text = regex.sub(regex.escape(name) + r"([^a-zA-Z0-9])", lambda m, v=value: v + m.group(1), text)
        return text
