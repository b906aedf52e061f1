import hashlib
import io
import json

import pyarrow as pa
import pytest

from operators.chunking import ChunkingConfig, chunk_documents, count_tokens, split_document

MARKDOWN = (
    "# Install\n\nRun the installer.\n\n## Network\n\n" + "Configure the interface with ifupdown. " * 30
    + "\n\n## Disks\n\nPartition the disk."
)


def doc(doc_id: str, text: str) -> dict:
    return {"doc_id": doc_id, "text": text, "source_uri": f"file:///{doc_id}.md", "recipe_hash": "r1"}


def test_chunks_follow_the_contract():
    result = chunk_documents(pa.Table.from_pylist([doc("d1", MARKDOWN)]), ChunkingConfig("recursive", 300, 30))
    rows = result.chunks.to_pylist()
    assert result.chunks.column_names == [
        "chunk_id", "doc_id", "text", "position", "headings", "source_uri", "recipe_hash"
    ]
    assert len(rows) > 2
    assert [r["position"] for r in rows] == list(range(len(rows)))
    for row in rows:
        assert row["chunk_id"] == hashlib.sha256(f"d1\n{row['text']}".encode()).hexdigest()
        assert len(row["text"]) <= 300
        assert (row["source_uri"], row["recipe_hash"]) == ("file:///d1.md", "r1")
    # Same input, same ids: re-indexing unchanged documents finds every chunk already stored.
    again = chunk_documents([doc("d1", MARKDOWN)], ChunkingConfig("recursive", 300, 30)).chunks
    assert again["chunk_id"].to_pylist() == [r["chunk_id"] for r in rows]


def test_markdown_splitter_records_the_headings_above_each_chunk():
    rows = chunk_documents([doc("d1", MARKDOWN)], ChunkingConfig("markdown", 300, 0)).chunks.to_pylist()
    headings = [json.loads(r["headings"]) for r in rows]
    assert headings[0] == ["Install"]
    assert ["Install", "Network"] in headings
    assert headings[-1] == ["Install", "Disks"]
    assert "Partition the disk." in rows[-1]["text"]


def test_markdown_splitter_keeps_a_text_without_headings_as_the_recursive_one_does():
    text = "First paragraph, with    spaces.\n\n    indented code line\n" + "More words here. " * 40
    assert split_document(text, ChunkingConfig("markdown", 200, 20)) == split_document(
        text, ChunkingConfig("recursive", 200, 20))


def test_html_read_as_text_is_cut_at_its_headings_and_not_at_comments_in_code():
    from operators.readers.formats import ReadOptions, read_html

    page = (b"<html><body><article><h1>Python FAQ</h1><h2>How do I copy a list?</h2><p>Use a slice.</p>"
            b"<pre># not a heading\nnew = old[:]</pre><h2>What is a tuple?</h2><p>An immutable sequence.</p>"
            b"</article></body></html>")
    document = next(read_html(io.BytesIO(page), "mem://faq.html", ReadOptions()))
    rows = split_document(document.text, ChunkingConfig("markdown", 800, 100, heading_context=True), document.title)
    assert [headings for _, headings in rows] == [["Python FAQ", "How do I copy a list?"],
                                                  ["Python FAQ", "What is a tuple?"]]
    first = rows[0][0]
    assert first.startswith("Python FAQ > How do I copy a list?\n\nUse a slice.")
    assert "# not a heading" in first and "new = old[:]" in first


def test_html_splitter_records_the_headings_above_each_chunk():
    html = "<html><body><h1>Guide</h1><p>Intro.</p><h2>Apt</h2><p>Use apt to install packages.</p></body></html>"
    rows = split_document(html, ChunkingConfig("html", 500, 0))
    assert ("Use apt to install packages.", ["Guide", "Apt"]) in rows


def test_token_splitter_keeps_chunks_within_the_model_token_budget():
    rows = split_document(MARKDOWN, ChunkingConfig("token", 64, 8))
    assert len(rows) > 3
    assert all(count_tokens(text) <= 64 for text, _ in rows)
    assert any(count_tokens(text) > 40 for text, _ in rows)  # pieces are merged up to the budget
    assert "Configure the interface" in " ".join(text for text, _ in rows)  # text kept verbatim (cased)


def test_blank_documents_and_repeated_chunks_are_counted():
    repeated = "Same paragraph here.\n\nSame paragraph here.\n\nOther paragraph."
    result = chunk_documents([doc("d1", "   "), doc("d2", repeated)], ChunkingConfig("recursive", 25, 0))
    assert result.empty_documents == ["d1"]
    assert result.duplicate_chunks == 1
    assert result.chunks["text"].to_pylist() == ["Same paragraph here.", "Other paragraph."]
    assert len(set(result.chunks["chunk_id"].to_pylist())) == result.chunks.num_rows


def test_bad_input_is_reported_with_the_record():
    with pytest.raises(ValueError, match="row 1 .*file:///x.md.* no doc_id"):
        chunk_documents([doc("d1", "a"), {"text": "b", "source_uri": "file:///x.md"}], ChunkingConfig())
    with pytest.raises(ValueError, match="splitter must be one of"):
        ChunkingConfig("sentences")
    with pytest.raises(ValueError, match="chunk_overlap < chunk_size"):
        ChunkingConfig("recursive", 100, 100)
