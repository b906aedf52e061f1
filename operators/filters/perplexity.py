"""Perplexity of a text under a KenLM language model, on SentencePiece pieces, as Data-Juicer computes it."""

from __future__ import annotations

from pydantic import Field

from operators.base import Filter, OperatorParams, Stats, in_range
from operators.models import find_model, kenlm_file, kenlm_model, sentencepiece_file, sentencepiece_model
from operators.registry import register


@register("perplexity_filter")
class PerplexityFilter(Filter):
    """Keep texts whose perplexity under the KenLM model `{lang}.arpa.bin` is within [min_ppl, max_ppl]."""

    class Params(OperatorParams):
        lang: str = Field("en", description="Language of the models: `{lang}.sp.model` and `{lang}.arpa.bin`.")
        min_ppl: float = Field(0, description="Smallest perplexity to keep a text.")
        max_ppl: float = Field(1500, description="Largest perplexity to keep a text.")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # resolved now, so a missing file fails when the recipe is loaded; the models (GBs for Data-Juicer's
        # published ones) load lazily, once per worker process
        self.tokenizer = find_model(self.name, sentencepiece_file(self.params.lang))
        self.language_model = find_model(self.name, kenlm_file(self.params.lang))

    def stat_types(self) -> dict[str, type]:
        return {"perplexity": float}

    def bounds(self) -> dict[str, tuple[float | None, float | None]]:
        return {"perplexity": (self.params.min_ppl, self.params.max_ppl)}

    def compute_stats(self, text: str) -> Stats:
        pieces = " ".join(sentencepiece_model(self.tokenizer).encode_as_pieces(text))
        model = kenlm_model(self.language_model)
        log10_prob, length = 0.0, 0
        for line in pieces.splitlines():
            log10_prob += model.score(line)
            length += len(line.split()) + 1  # + end of sentence
        return {"perplexity": round(10.0 ** (-log10_prob / length), 1) if length else 0.0}

    def keep(self, stats: Stats) -> tuple[bool, str]:
        return in_range("perplexity", stats["perplexity"], self.params.min_ppl, self.params.max_ppl)
