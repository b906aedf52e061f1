"""Source walkers: they list the inputs of a source as `SourceFile`s (or `Reject`s) without reading them.

`read_source` then checks size and type before a reader opens the input, so an oversized or unknown file is
rejected without being read. Local folders never follow a link or leave their root; object stores (S3, MinIO)
are walked through fsspec.
"""

import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import fsspec
from fsspec.utils import glob_translate

from operators.readers.formats import ReadOptions, format_for, read_stream
from operators.readers.records import Document, Reject


@dataclass(frozen=True)
class SourceFile:
    uri: str
    name: str  # path below the source root, or the URL path: picks the reader by suffix
    size: int
    open: Callable[[], BinaryIO]
    content_type: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def read_source(item: SourceFile, options: ReadOptions) -> Iterator[Document | Reject]:
    """The documents of one input, its metadata merged into theirs; size and type checked before opening."""
    if item.size > options.max_bytes:
        yield Reject(item.uri, "oversized", f"{item.size} bytes, more than max_bytes={options.max_bytes}")
        return
    if item.size == 0:
        yield Reject(item.uri, "empty", "the file is empty (0 bytes)")
        return
    fmt = format_for(item.name, item.content_type)
    if fmt is None:
        kind = PurePosixPath(item.name).suffix or item.content_type or "extension-less"
        yield Reject(item.uri, "unsupported", f"no reader for {kind} files")
        return
    try:
        stream = item.open()
    except OSError as error:
        yield Reject(item.uri, "unreadable", printable(f"{type(error).__name__}: {error}"))
        return
    with stream:
        for record in read_stream(stream, item.uri, fmt, options):
            if isinstance(record, Document):
                record = replace(record, metadata={**item.metadata, **record.metadata})
            yield record


class GlobFilter:
    """Include/exclude glob patterns relative to a source root (`**` spans folders)."""

    def __init__(self, include: Sequence[str], exclude: Sequence[str] = ()):
        for pattern in [*include, *exclude]:
            if pattern.startswith("/") or ".." in PurePosixPath(pattern).parts:
                raise ValueError(f"glob pattern {pattern!r} must be relative and stay inside the source root")
        self._include = [re.compile(glob_translate(p)) for p in include]
        self._exclude = [re.compile(glob_translate(p)) for p in exclude]

    def __call__(self, relative_path: str) -> bool:
        return any(p.fullmatch(relative_path) for p in self._include) and not any(
            p.fullmatch(relative_path) for p in self._exclude
        )


def printable(name: str) -> str:
    """A file name as valid UTF-8 for metadata and details: Linux allows any bytes, which Python keeps as lone
    surrogates that Parquet cannot store; those bytes become U+FFFD (the URI keeps them, percent-encoded)."""
    return os.fsencode(name).decode("utf-8", "replace")


def _open_listed(path: str, listed: os.stat_result) -> BinaryIO:
    # O_NOFOLLOW refuses a file swapped for a link after listing; the inode check catches a swapped folder.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (listed.st_dev, listed.st_ino):
        os.close(fd)
        raise OSError(f"{path} changed between listing and reading")
    return os.fdopen(fd, "rb")


def walk_folder(
    root: str | Path, include: Sequence[str] = ("**/*",), exclude: Sequence[str] = ()
) -> Iterator[SourceFile | Reject]:
    """Regular files below `root` matching the patterns; links and special files are rejected, not followed."""
    root = Path(root).resolve()  # the root itself may be a link; nothing below it is followed
    if not root.is_dir():
        raise NotADirectoryError(f"source folder {root} does not exist or is not a folder")
    matches = GlobFilter(include, exclude)
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted([*filenames, *(d for d in dirnames if os.path.islink(os.path.join(directory, d)))]):
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root).replace(os.sep, "/")
            if not matches(relative):
                continue
            uri = Path(path).as_uri()  # percent-encodes the name's bytes: always ASCII
            try:
                info = os.lstat(path)
            except OSError as error:
                yield Reject(uri, "unreadable", printable(f"{type(error).__name__}: {error}"))
                continue
            if stat.S_ISLNK(info.st_mode):
                target = printable(os.readlink(path))
                yield Reject(uri, "link", f"symbolic link to {target!r}: links are not followed")
                continue
            if not stat.S_ISREG(info.st_mode):
                yield Reject(uri, "link", "not a regular file (device, pipe or socket)")
                continue
            modified = datetime.fromtimestamp(info.st_mtime, UTC).isoformat()
            yield SourceFile(
                uri=uri, name=printable(relative), size=info.st_size, open=partial(_open_listed, path, info),
                metadata={"path": printable(relative), "bytes": info.st_size, "modified": modified},
            )


def walk_filesystem(
    fs: fsspec.AbstractFileSystem, root: str, include: Sequence[str] = ("**/*",), exclude: Sequence[str] = (),
    protocol: str = "s3",
) -> Iterator[SourceFile]:
    """Objects below `root` (an fsspec path such as `bucket/prefix`) matching the patterns."""
    root = fs._strip_protocol(root).rstrip("/")
    matches = GlobFilter(include, exclude)
    try:
        found = fs.find(root, detail=True)
    except OSError as error:
        raise OSError(f"cannot list {protocol}://{root}: {error}") from error
    for path, info in sorted(found.items()):
        relative = path[len(root):].lstrip("/")
        if info.get("type") != "file" or not matches(relative):
            continue
        metadata = {"key": path.split("/", 1)[-1], "bytes": info["size"]}
        if info.get("ETag"):
            metadata["etag"] = info["ETag"].strip('"')
        yield SourceFile(
            uri=f"{protocol}://{path}", name=relative, size=info["size"], open=partial(fs.open, path, "rb"),
            metadata=metadata,
        )
