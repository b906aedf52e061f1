"""Source walkers: local folders (globs, links, special files) and fsspec object stores."""

import os
from pathlib import Path

import fsspec
import pytest

from operators.readers import Document, ReadOptions, Reject, SourceFile, read_source, walk_filesystem, walk_folder


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def split(items) -> tuple[dict[str, SourceFile], dict[str, Reject]]:
    items = list(items)
    files = {i.name: i for i in items if isinstance(i, SourceFile)}
    rejects = {i.source_uri.rsplit("/", 1)[-1]: i for i in items if isinstance(i, Reject)}
    return files, rejects


def test_folder_globs_include_and_exclude(tmp_path):
    for name in ["a.txt", "docs/b.md", "docs/deep/c.txt", "docs/deep/skip.txt", "notes.log"]:
        write(tmp_path / name, f"text of {name}")
    files, rejects = split(walk_folder(tmp_path, include=["**/*.txt", "**/*.md"], exclude=["**/skip.*"]))
    assert sorted(files) == ["a.txt", "docs/b.md", "docs/deep/c.txt"]
    assert not rejects
    assert files["docs/b.md"].uri == (tmp_path / "docs" / "b.md").as_uri()
    assert files["a.txt"].metadata["bytes"] == len("text of a.txt")


def test_folder_never_follows_links_out_of_its_root(tmp_path):
    outside = write(tmp_path / "outside" / "secret.txt", "secret")
    root = tmp_path / "root"
    write(root / "kept.txt", "kept")
    (root / "file-link.txt").symlink_to(outside)
    (root / "folder-link").symlink_to(outside.parent, target_is_directory=True)
    os.mkfifo(root / "pipe.txt")
    files, rejects = split(walk_folder(root))
    assert sorted(files) == ["kept.txt"]
    assert {name: r.reason for name, r in rejects.items()} == {
        "file-link.txt": "link", "folder-link": "link", "pipe.txt": "link",
    }


def test_patterns_cannot_point_out_of_the_root(tmp_path):
    with pytest.raises(ValueError, match="stay inside the source root"):
        list(walk_folder(tmp_path, include=["../*"]))
    with pytest.raises(NotADirectoryError, match="does not exist"):
        list(walk_folder(tmp_path / "missing"))


def test_a_file_swapped_for_a_link_after_listing_is_not_read(tmp_path):
    outside = write(tmp_path / "outside.txt", "must not be read")
    root = tmp_path / "root"
    listed = write(root / "doc.txt", "fine")
    [item] = walk_folder(root)
    listed.unlink()
    listed.symlink_to(outside)
    [reject] = read_source(item, ReadOptions())
    assert reject.reason == "unreadable"


def test_read_source_checks_size_and_type_before_reading(tmp_path):
    write(tmp_path / "big.txt", "x" * 5000)
    write(tmp_path / "image.png", "not really")
    write(tmp_path / "ok.md", "# Title\n\nbody")
    results = {
        item.name: list(read_source(item, ReadOptions(max_bytes=1000))) for item in walk_folder(tmp_path)
    }
    assert results["big.txt"][0].reason == "oversized" and "5000 bytes" in results["big.txt"][0].detail
    assert results["image.png"][0].reason == "unsupported"
    [document] = results["ok.md"]
    assert isinstance(document, Document) and document.metadata["path"] == "ok.md"


def test_fsspec_walker_lists_and_reads_objects_below_a_prefix():
    fs = fsspec.filesystem("memory")
    fs.pipe({
        "/bucket/corpus/a.txt": b"first document",
        "/bucket/corpus/sub/b.jsonl": b'{"text": "second"}\n{"oops"\n',
        "/bucket/corpus/sub/c.bin": b"\x00\x01",
        "/bucket/other/d.txt": b"not below the prefix",
    })
    try:
        items = list(walk_filesystem(fs, "/bucket/corpus", include=["**/*.txt", "**/*.jsonl"], protocol="memory"))
        assert [i.name for i in items] == ["a.txt", "sub/b.jsonl"]
        records = [r for item in items for r in read_source(item, ReadOptions())]
        assert [type(r).__name__ for r in records] == ["Document", "Document", "Reject"]
        assert records[0].source_uri == "memory:///bucket/corpus/a.txt"
        assert records[2].source_uri.endswith("sub/b.jsonl#line=2")
    finally:
        fs.rm("/bucket", recursive=True)
