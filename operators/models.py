"""Model files for operators that need one (KenLM, SentencePiece), found on disk, never downloaded.

Looked up first in ``DATAMATE_MODELS_DIR``, then in Data-Juicer's own model cache
(``DATA_JUICER_MODELS_CACHE``, default ``~/.cache/data_juicer/models``), under Data-Juicer's file names, so a
Data-Juicer user's existing cache just works. A missing file fails when the recipe is loaded, naming the
operator, the file and the directories searched.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path


class ModelNotFoundError(ValueError):
    """An operator's model file is in none of the model directories."""


def model_dirs() -> list[Path]:
    """Directories searched for model files, in order."""
    dirs = []
    if os.environ.get("DATAMATE_MODELS_DIR"):
        dirs.append(Path(os.environ["DATAMATE_MODELS_DIR"]).expanduser())
    cache_dir = os.environ.get("DATA_JUICER_MODELS_CACHE") or "~/.cache/data_juicer/models"
    dirs.append(Path(cache_dir).expanduser())
    return dirs


def kenlm_file(lang: str) -> str:
    return f"{lang}.arpa.bin"


def sentencepiece_file(lang: str) -> str:
    return f"{lang}.sp.model"


def find_model(operator: str, filename: str) -> Path:
    """The path of ``filename`` in the first model directory that has it."""
    dirs = model_dirs()
    for directory in dirs:
        if (directory / filename).is_file():
            return directory / filename
    searched = ", ".join(str(d) for d in dirs)
    raise ModelNotFoundError(
        f"{operator} needs the model file {filename!r}, found in none of: {searched} "
        "(set DATAMATE_MODELS_DIR, or copy it from a Data-Juicer model cache)"
    )


@cache
def sentencepiece_model(path: Path):
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(path))


@cache
def kenlm_model(path: Path):
    import kenlm  # from the kenlm-ex wheel

    return kenlm.Model(str(path))
