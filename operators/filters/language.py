"""Language identification with a confidence score, by lingua (models ship in the package, no download).

Loading lingua's models for all 75 languages takes ~13 s per process and a lot of memory; a detector for
the 20 most common web languages loads in ~3 s and still scores confidently. So the filter builds, lazily
and once per process, a detector for `candidate_languages` plus the wanted `lang`, and confidence values are
relative to those candidates ("all" restores the full set).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Literal

from lingua import IsoCode639_1, LanguageDetectorBuilder
from pydantic import Field, field_validator

from operators.base import Filter, OperatorParams, Stats
from operators.registry import register

COMMON_LANGUAGES = (
    "en", "zh", "es", "fr", "de", "ru", "ja", "pt", "it", "ar",
    "ko", "nl", "pl", "tr", "vi", "id", "hi", "sv", "uk", "cs",
)
UNKNOWN = "unknown"


def _iso(code: str) -> IsoCode639_1:
    try:
        return getattr(IsoCode639_1, code.upper())
    except AttributeError:
        raise ValueError(f"lingua does not know the ISO 639-1 language code {code!r}") from None


@cache
def _detector(codes: tuple[str, ...] | None, low_accuracy: bool):
    builder = (
        LanguageDetectorBuilder.from_all_languages() if codes is None
        else LanguageDetectorBuilder.from_iso_codes_639_1(*(_iso(code) for code in codes))
    )
    return (builder.with_low_accuracy_mode() if low_accuracy else builder).build()


@register("language_id_score_filter")
class LanguageIDScoreFilter(Filter):
    """Identify the language (lingua) and keep texts in `lang` whose confidence is at least min_score."""

    class Params(OperatorParams):
        lang: str | list[str] = Field("", description="Language code(s) to keep (ISO 639-1); empty keeps any language.")
        min_score: float = Field(0.8, ge=0.0, le=1.0, description="Smallest confidence of the identified language.")
        candidate_languages: list[str] | Literal["all"] = Field(
            list(COMMON_LANGUAGES), description="Languages the detector chooses among; 'all' loads all 75 (slow)."
        )
        low_accuracy: bool = Field(False, description="Lingua's low-accuracy mode: faster, weaker on short texts.")

        @field_validator("lang", "candidate_languages")
        @classmethod
        def _known_codes(cls, value):
            for code in [value] if isinstance(value, str) else value:
                if code and code != "all":
                    _iso(code)
            return value

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        lang = self.params.lang
        self._wanted = frozenset([lang] if isinstance(lang, str) and lang else lang or [])
        candidates = self.params.candidate_languages
        self._codes = None if candidates == "all" else tuple(sorted(set(candidates) | self._wanted))

    def _stats(self, confidences) -> Stats:
        best = confidences[0]
        if best.value == 0:  # no letters lingua could use (empty, digits, symbols)
            return {"lang": UNKNOWN, "lang_score": 0.0}
        # Rounded: lingua's sums differ in the last bits between runs, and outputs must be reproducible.
        return {"lang": best.language.iso_code_639_1.name.lower(), "lang_score": round(best.value, 6)}

    def compute_stats(self, text: str) -> Stats:
        detector = _detector(self._codes, self.params.low_accuracy)
        return self._stats(detector.compute_language_confidence_values(text.replace("\n", " ")))

    def compute_stats_batch(self, texts: Sequence[str]) -> list[Stats]:
        detector = _detector(self._codes, self.params.low_accuracy)
        results = detector.compute_language_confidence_values_in_parallel([t.replace("\n", " ") for t in texts])
        return [self._stats(confidences) for confidences in results]

    def stat_types(self) -> dict[str, type]:
        return {"lang": str, "lang_score": float}

    def bounds(self) -> dict[str, tuple[float | None, float | None]]:
        return {"lang_score": (self.params.min_score, None)}

    def keep(self, stats: Stats) -> tuple[bool, str]:
        if self._wanted and stats["lang"] not in self._wanted:
            return False, f"lang {stats['lang']} not in {sorted(self._wanted)}"
        if stats["lang_score"] < self.params.min_score:
            return False, f"lang_score {stats['lang_score']:.3g} < {self.params.min_score:.3g} (lang {stats['lang']})"
        return True, ""
