"""Benchmark decontamination by n-gram overlap (as datatrove's and GPT-3's: a record sharing any n-gram of
`n` words with a benchmark question or answer is contaminated).

The index holds only the 64-bit hashes of the benchmarks' n-grams (xxhash), built by streaming the benchmark
files batch by batch; the checked data streams past it, so memory is the benchmarks' n-gram count, never the
data's. A hit reports the benchmark, the overlapping n-gram (rebuilt from the record's own tokens) and its
position (token offset in the record).
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

import pyarrow.dataset as pds
import pyarrow.fs as pafs
import xxhash

from operators.evaluation.metrics import tokens

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
TEXT_FIELDS = ("question", "answer")


@dataclass(frozen=True)
class Contamination:
    benchmark: str
    ngram: str
    position: int


def ngram_hashes(text: str, n: int) -> Iterator[tuple[int, int]]:
    """(position, hash) of every n-gram of words (CJK: characters); none when the text is shorter than n."""
    words = tokens(text)
    for position in range(len(words) - n + 1):
        yield position, xxhash.xxh3_64_intdigest("\x1f".join(words[position: position + n]).encode())


def benchmark_texts(path: str, fields: Iterable[str] = TEXT_FIELDS, filesystem: pafs.FileSystem | None = None,
                    ) -> Iterator[str]:
    """The question/answer texts of one benchmark file (JSONL, Parquet or CSV; local or s3://), streamed."""
    suffix = PurePosixPath(path.split("://", 1)[-1]).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"benchmark {path}: unsupported file type {suffix!r} (use {', '.join(FORMATS)})")
    if filesystem is None:
        filesystem, path = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    elif "://" in path:
        path = path.split("://", 1)[1]
    dataset = pds.dataset(path, format=FORMATS[suffix], filesystem=filesystem)
    present = [f for f in fields if f in dataset.schema.names]
    if not present:
        raise ValueError(f"benchmark {path} has none of the fields {list(fields)}; it has {dataset.schema.names}")
    for batch in dataset.to_batches(columns=present):
        for column in batch.columns:
            yield from (str(value) for value in column.to_pylist() if value)


class BenchmarkIndex:
    def __init__(self, n: int = 13):
        self.n = n
        self.hashes: dict[int, str] = {}
        self.ngrams_per_benchmark: dict[str, int] = {}

    def add(self, benchmark: str, texts: Iterable[str]) -> None:
        count = 0
        for text in texts:
            for _, digest in ngram_hashes(text, self.n):
                self.hashes.setdefault(digest, benchmark)
                count += 1
        self.ngrams_per_benchmark[benchmark] = count

    def check(self, text: str) -> Contamination | None:
        """The first overlap of `text` with any benchmark, or None."""
        for position, digest in ngram_hashes(text, self.n):
            benchmark = self.hashes.get(digest)
            if benchmark is not None:
                words = tokens(text)[position: position + self.n]
                return Contamination(benchmark, " ".join(words), position)
        return None


def benchmark_name(path: str) -> str:
    return PurePosixPath(path.split("://", 1)[-1]).stem
