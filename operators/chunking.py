"""Split cleaned documents into chunks for retrieval and synthesis, with LangChain's text splitters.

Splitters (the `index.splitter` of a dataset spec):
- `recursive`: RecursiveCharacterTextSplitter, `chunk_size` in characters.
- `token`: the same splitter measuring `chunk_size` in tokens of the packaged embedding model's WordPiece
  tokenizer (all-MiniLM-L6-v2 reads at most 256 tokens, so chunks stay within what it embeds). The text is
  cut at natural boundaries and kept verbatim; tiktoken's TokenTextSplitter is not used because its
  encodings are downloaded at run time.
- `markdown` / `html`: split at headers first (MarkdownHeaderTextSplitter / HTMLHeaderTextSplitter), the
  headings above a chunk go to `headings`, then long sections are split recursively by characters. A text
  with no `#` heading line goes to the recursive splitter as it is. HTML read as text (the default
  `html_format`) has its headings as `#` lines, so `markdown` cuts it at its sections too.

`heading_context` (the `index.heading_context` of a spec) carries the page title and the section headings
into every chunk: into `headings` (title first) and, as a first line `Title > Section > Subsection`, into the
text that is embedded and matched by BM25, so a chunk from the middle of a long answer still says what it
answers. The markdown splitter then strips the heading lines from the section text (they are in that line).

Chunk columns (docs/architecture.md): chunk_id = sha256(doc_id + "\\n" + text), doc_id, text, position (0-based
within the document), headings (JSON list), source_uri, recipe_hash.
"""

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache

import pyarrow as pa
from langchain_text_splitters import (
    HTMLHeaderTextSplitter,
    MarkdownHeaderTextSplitter,
    RecursiveCharacterTextSplitter,
)

SPLITTERS = ("recursive", "token", "markdown", "html")
HEADER_LEVELS = 4
MARKDOWN_HEADING = re.compile(rf"^#{{1,{HEADER_LEVELS}}}( |$)", re.M)

CHUNK_SCHEMA = pa.schema(
    [
        ("chunk_id", pa.string()),
        ("doc_id", pa.string()),
        ("text", pa.string()),
        ("position", pa.int32()),
        ("headings", pa.string()),
        ("source_uri", pa.string()),
        ("recipe_hash", pa.string()),
    ]
)


def chunk_id(doc_id: str, text: str) -> str:
    return hashlib.sha256(f"{doc_id}\n{text}".encode()).hexdigest()


@cache
def minilm_tokenizer():
    """The WordPiece tokenizer of all-MiniLM-L6-v2 (`operators/minilm`)."""
    from operators.minilm import load_tokenizer

    tokenizer = load_tokenizer()
    # The shipped file pads and truncates to 128 tokens; counting needs the real length.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def count_tokens(text: str) -> int:
    return len(minilm_tokenizer().encode(text, add_special_tokens=False).ids)


@dataclass(frozen=True)
class ChunkingConfig:
    splitter: str = "recursive"
    chunk_size: int = 800
    chunk_overlap: int = 100
    heading_context: bool = False

    def __post_init__(self) -> None:
        if self.splitter not in SPLITTERS:
            raise ValueError(f"splitter must be one of {SPLITTERS}, got {self.splitter!r}")
        if self.chunk_size <= 0 or not 0 <= self.chunk_overlap < self.chunk_size:
            raise ValueError(
                f"need chunk_size > 0 and 0 <= chunk_overlap < chunk_size, got {self.chunk_size}/{self.chunk_overlap}"
            )


@dataclass
class ChunkingResult:
    chunks: pa.Table
    documents: int = 0
    empty_documents: list[str] = field(default_factory=list)  # doc_ids that gave no chunk (blank text)
    duplicate_chunks: int = 0  # identical chunk text repeated within a document: kept once (same chunk_id)


def _size_splitter(config: ChunkingConfig) -> RecursiveCharacterTextSplitter:
    length: Callable[[str], int] = count_tokens if config.splitter == "token" else len
    return RecursiveCharacterTextSplitter(
        chunk_size=config.chunk_size, chunk_overlap=config.chunk_overlap, length_function=length
    )


def _sections(text: str, splitter: str, strip_headers: bool = False) -> list[tuple[str, list[str]]]:
    """(section text, headings above it) pairs: the whole text for the plain splitters."""
    if splitter == "markdown":
        if not MARKDOWN_HEADING.search(text):
            return [(text, [])]  # kept verbatim: the header splitter strips every line and joins them with "  \n"
        header_splitter = MarkdownHeaderTextSplitter(
            [("#" * level, f"h{level}") for level in range(1, HEADER_LEVELS + 1)], strip_headers=strip_headers
        )
        documents = header_splitter.split_text(text)
    elif splitter == "html":
        header_splitter = HTMLHeaderTextSplitter([(f"h{level}", f"h{level}") for level in range(1, HEADER_LEVELS + 1)])
        documents = header_splitter.split_text(text)
    else:
        return [(text, [])]
    levels = [f"h{level}" for level in range(1, HEADER_LEVELS + 1)]
    return [(doc.page_content, [doc.metadata[h] for h in levels if h in doc.metadata]) for doc in documents]


def split_document(text: str, config: ChunkingConfig, title: str | None = None) -> list[tuple[str, list[str]]]:
    """(chunk text, headings) in document order; with `heading_context`, the title and headings lead each text."""
    size_splitter = _size_splitter(config)
    pieces = [
        (piece, headings)
        for section, headings in _sections(text, config.splitter, strip_headers=config.heading_context)
        for piece in size_splitter.split_text(section)
        if piece.strip()
    ]
    if not config.heading_context:
        return pieces
    with_context = []
    for piece, headings in pieces:
        # The page title often repeats as its first heading: carried once. Sphinx pages end headings with a
        # permalink sign, which says nothing.
        path = list(dict.fromkeys(h.strip().rstrip("¶").strip() for h in [title or "", *headings]))
        path = [h for h in path if h]
        with_context.append((f"{' > '.join(path)}\n\n{piece}" if path else piece, path))
    return with_context


def chunk_documents(documents: pa.Table | pa.RecordBatch | Iterable[dict], config: ChunkingConfig,
                    first_row: int = 0) -> ChunkingResult:
    """Chunks of every document (rows with `doc_id`, `text` and optionally `source_uri`, `recipe_hash`, `title`).

    `first_row` is the position of the first document in the whole input, so an error names the right row when
    documents come batch by batch."""
    rows = documents.to_pylist() if isinstance(documents, pa.Table | pa.RecordBatch) else list(documents)
    result = ChunkingResult(chunks=CHUNK_SCHEMA.empty_table(), documents=len(rows))
    out: list[dict] = []
    for index, row in enumerate(rows, start=first_row):
        doc_id = row.get("doc_id")
        if not doc_id:
            raise ValueError(f"document row {index} ({row.get('source_uri')}) has no doc_id")
        seen: set[str] = set()
        for text, headings in split_document(row.get("text") or "", config, row.get("title")):
            cid = chunk_id(doc_id, text)
            if cid in seen:
                result.duplicate_chunks += 1
                continue
            seen.add(cid)
            out.append(
                {
                    "chunk_id": cid,
                    "doc_id": doc_id,
                    "text": text,
                    "position": len(seen) - 1,
                    "headings": json.dumps(headings, ensure_ascii=False),
                    "source_uri": row.get("source_uri"),
                    "recipe_hash": row.get("recipe_hash"),
                }
            )
        if not seen:
            result.empty_documents.append(doc_id)
    result.chunks = pa.Table.from_pylist(out, schema=CHUNK_SCHEMA)
    return result


@dataclass
class ChunkingTotals:
    """What `chunk_batches` did so far, summed over batches; keeps a few example ids, not all of them."""

    documents: int = 0
    chunks: int = 0
    empty_documents: int = 0
    empty_examples: list[str] = field(default_factory=list)
    duplicate_chunks: int = 0
    max_examples: int = 20

    def add(self, result: ChunkingResult) -> None:
        self.documents += result.documents
        self.chunks += result.chunks.num_rows
        self.empty_documents += len(result.empty_documents)
        self.empty_examples += result.empty_documents[: self.max_examples - len(self.empty_examples)]
        self.duplicate_chunks += result.duplicate_chunks


def chunk_batches(batches: Iterable[pa.RecordBatch | pa.Table], config: ChunkingConfig,
                  totals: ChunkingTotals) -> Iterator[pa.RecordBatch]:
    """Chunks batch by batch, in `CHUNK_SCHEMA`: memory holds one batch of documents and its chunks at a time."""
    for batch in batches:
        result = chunk_documents(batch, config, first_row=totals.documents)
        totals.add(result)
        yield from result.chunks.to_batches()


@dataclass(frozen=True)
class ChunkProcessor:
    """`chunk_documents` as a shard processor (`operators.ray_shards`): chunks and the counters to fold."""

    config: ChunkingConfig

    def __call__(self, documents: pa.Table) -> tuple[pa.Table, dict]:
        result = chunk_documents(documents, self.config)
        return result.chunks, {"documents": result.documents, "chunks": result.chunks.num_rows,
                               "empty_documents": len(result.empty_documents),
                               "empty_examples": result.empty_documents, "duplicate_chunks": result.duplicate_chunks}
