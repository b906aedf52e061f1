"""Chinese script conversion (Simplified, Traditional, Taiwan, Hong Kong, Japanese Kanji) with OpenCC."""

from __future__ import annotations

from functools import cache
from typing import Literal

from pydantic import Field

from operators.base import Mapper, OperatorParams
from operators.registry import register

MODES = ("s2t", "t2s", "s2tw", "tw2s", "s2hk", "hk2s", "s2twp", "tw2sp", "t2tw", "tw2t", "hk2t", "t2hk", "t2jp",
         "jp2t")


@cache
def _converter(mode: str):
    import opencc

    return opencc.OpenCC(f"{mode}.json")


@register("chinese_convert_mapper")
class ChineseConvertMapper(Mapper):
    """Convert Chinese text between Simplified, Traditional (Taiwan, Hong Kong) and Japanese Kanji (OpenCC)."""

    class Params(OperatorParams):
        mode: Literal[MODES] = Field("s2t", description="OpenCC conversion, e.g. s2t, t2s, s2twp, t2jp.")

    def process_text(self, text: str) -> str:
        return _converter(self.params.mode).convert(text)
