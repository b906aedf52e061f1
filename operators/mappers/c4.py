"""C4 line clean-up: keep only the lines that pass the C4 line rules (see operators/filters/c4.py)."""

from __future__ import annotations

from operators.base import Mapper
from operators.filters.c4 import C4LineParams, c4_lines
from operators.registry import register


@register("c4_line_filter_mapper")
class C4LineFilterMapper(Mapper):
    """Keep only lines passing the C4 line rules (terminal punctuation, 3+ words, no javascript or policy line)."""

    Params = C4LineParams

    def process_text(self, text: str) -> str:
        kept, _, _ = c4_lines(text, self.params)
        return "\n".join(kept).strip()
