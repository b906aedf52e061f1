"""One test group per reader, on the shipped sample corpus and on bad inputs made on the spot."""

import io
import json
import logging
from pathlib import Path

import docx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.readers import Document, ReadOptions, Reject, format_for, read_stream

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"


def read(data: bytes | Path, fmt: str, **options) -> list[Document | Reject]:
    raw = data.read_bytes() if isinstance(data, Path) else data
    return list(read_stream(io.BytesIO(raw), "mem://input", fmt, ReadOptions(**options)))


def only_document(records: list) -> Document:
    assert len(records) == 1 and isinstance(records[0], Document), records
    return records[0]


def only_reject(records: list, reason: str) -> Reject:
    assert len(records) == 1 and isinstance(records[0], Reject), records
    assert records[0].reason == reason, records[0]
    return records[0]


def test_format_is_chosen_by_suffix_then_content_type():
    assert format_for("a/b/page.HTM") == "html"
    assert format_for("notes.md") == "md"
    assert format_for("/wiki/Page", "text/html; charset=utf-8") == "html"
    assert format_for("dump.bin", "application/octet-stream") is None


# --- txt / md ------------------------------------------------------------------------------------------
def test_txt_keeps_the_text_and_takes_the_first_line_as_title():
    document = only_document(read(SAMPLES / "notes" / "log-rotation.txt", "txt"))
    assert document.title == "Log rotation with logrotate"
    assert "/etc/logrotate.d/" in document.text
    assert document.mime_type == "text/plain"
    assert len(document.doc_id) == 64


def test_txt_in_latin1_is_decoded():
    document = only_document(read(SAMPLES / "notes" / "locales-latin1.txt", "txt"))
    assert "paramètres régionaux" in document.text
    assert document.metadata["encoding"] != "utf-8"


def test_utf16_with_bom_is_decoded():
    document = only_document(read("Grüße aus Köln".encode("utf-16"), "txt"))
    assert document.text == "Grüße aus Köln"


def test_md_title_is_the_first_heading():
    document = only_document(read(SAMPLES / "notes" / "package-pinning.md", "md"))
    assert document.title == "Pinning packages with APT preferences"
    assert document.mime_type == "text/markdown"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"  \n\t \n", "empty"),
        (b"\x00\x01\x02binary\x00" * 50, "binary"),
        (bytes(range(128, 256)) * 6, "encoding"),
        (b"x" * 2000, "oversized"),
    ],
)
def test_bad_text_inputs_are_rejected_with_a_reason(data, reason):
    reject = only_reject(read(data, "txt", max_bytes=1000), reason)
    assert reject.source_uri == "mem://input"
    assert reject.detail


# --- html ----------------------------------------------------------------------------------------------
def test_html_main_text_is_extracted_and_the_title_kept():
    document = only_document(read(SAMPLES / "debian" / "handbook-en" / "sect.dhcp.html", "html"))
    assert document.title == "10.8. DHCP"
    # The DocBook section headings stay, each a `#` line of its level before its text.
    assert document.text.startswith("## 10.8. DHCP\n\nDHCP (for Dynamic Host Configuration Protocol)")
    assert "\n\n### 10.8.1. Configuring\n\n" in document.text and "\n\n### 10.8.2. DHCP and DNS\n\n" in document.text
    assert "isc-dhcp-server" in document.text
    # Navigation and the download banner are boilerplate, not text.
    assert "Download the ebook" not in document.text
    assert "<div" not in document.text


WIDGET_PAGE = b"""<html><head><title>Widget configuration</title></head><body>
<nav><a href="/">Home</a> | <a href="/docs">Docs</a></nav>
<article>
<h1>Configuring the widget</h1>
<p>Set <code>WIDGET_PORT</code> to the port the widget listens on, then <b>restart</b> it.<br/>Paths like
   <em>/etc/widget_conf</em> and 2*3 stay as they are.</p>
<h2>Options</h2>
<ul><li>WIDGET_PORT: the port <ul><li>default 8080</li></ul></li><li>WIDGET_HOST: the address</li></ul>
<ol><li>Edit the file</li><li>Restart the service</li></ol>
<table><tr><th>Variable</th><th>Default</th></tr><tr><td>WIDGET_PORT</td><td>8080</td></tr></table>
<pre>[widget]
    port = 8080</pre>
<p>That is all there is to it; the widget_name field is optional, as the manual of the widget says.</p>
</article></body></html>"""


def test_html_becomes_plain_text_with_the_page_structure_and_no_markdown_escapes():
    document = only_document(read(WIDGET_PAGE, "html"))
    assert document.title == "Configuring the widget"  # trafilatura prefers the page's h1 to its <title>
    # Headings as `#` lines and code between fences (what the markdown splitter cuts at and skips); no inline
    # Markdown and no escapes.
    assert document.text == (
        "# Configuring the widget\n\n"
        "Set WIDGET_PORT to the port the widget listens on, then restart it.\n"
        "Paths like /etc/widget_conf and 2*3 stay as they are.\n\n"
        "## Options\n\n"
        "- WIDGET_PORT: the port\n  - default 8080\n- WIDGET_HOST: the address\n\n"
        "1. Edit the file\n2. Restart the service\n\n"
        "Variable | Default\nWIDGET_PORT | 8080\n\n"
        "```\n[widget]\n    port = 8080\n```\n\n"
        "That is all there is to it; the widget_name field is optional, as the manual of the widget says."
    )


def test_html_as_markdown_on_request():
    document = only_document(read(WIDGET_PAGE, "html", html_format="markdown"))
    assert document.text.startswith("# Configuring the widget\n")
    assert "`WIDGET_PORT`" in document.text and "**restart**" in document.text
    assert "widget\\_name" in document.text  # Markdown escapes, the reason plain text is the default


def test_html_without_any_text_is_rejected_as_empty():
    only_reject(read(b"<html><head><title>x</title></head><body><script>var a;</script></body></html>", "html"),
                "empty")


# --- pdf / docx ----------------------------------------------------------------------------------------
def test_pdf_text_of_every_page():
    document = only_document(read(SAMPLES / "documents" / "upgrading-debian.pdf", "pdf"))
    assert document.title == "Upgrading Debian safely"
    assert "Release notes in brief" in document.text and "apt full-upgrade" in document.text
    assert document.metadata["pages"] == 2


def test_truncated_pdf_is_rejected_as_corrupt():
    data = (SAMPLES / "documents" / "upgrading-debian.pdf").read_bytes()[:600]
    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logging.getLogger().addHandler(handler)
    try:
        reject = only_reject(read(data, "pdf"), "corrupt")
    finally:
        logging.getLogger().removeHandler(handler)
    assert "PDF" in reject.detail
    # pypdf's own warning is explained once, in the reject of that file, not as an anonymous log line.
    assert "(pypdf: EOF marker not found)" in reject.detail
    assert not any("EOF marker" in message for message in logged)


def test_docx_paragraphs_headings_and_tables():
    document = docx.Document()
    document.add_heading("Mirrors", level=1)
    document.add_paragraph("Pick a mirror close to you.")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "deb.debian.org", "CDN"
    buffer = io.BytesIO()
    document.save(buffer)
    result = only_document(read(buffer.getvalue(), "docx"))
    assert result.text == "# Mirrors\n\nPick a mirror close to you.\n\ndeb.debian.org | CDN"
    assert result.title == "Mirrors"


def test_sample_docx_keeps_its_title():
    document = only_document(read(SAMPLES / "documents" / "choosing-a-file-system.docx", "docx"))
    assert document.title == "Choosing a file system"
    assert "## When to pick something else" in document.text


def test_a_text_file_named_docx_is_corrupt():
    only_reject(read(b"this is not a zip archive at all", "docx"), "corrupt")


# --- json / jsonl / csv / parquet ---------------------------------------------------------------------
def test_jsonl_uses_the_configured_fields_and_rejects_bad_lines_by_number():
    records = read(SAMPLES / "records" / "faq.jsonl", "jsonl", text_field="body", id_field="faq_id",
                   title_field="question")
    documents = [r for r in records if isinstance(r, Document)]
    rejects = {r.reason: r for r in records if isinstance(r, Reject)}
    assert len(documents) == 7 and len(rejects) == 2 and len(records) == 9
    first = documents[0]
    assert first.source_uri == "mem://input#id=faq-001"
    assert first.title == "How do I find which package owns a file?"
    assert first.metadata == {"faq_id": "faq-001", "question": first.title}
    assert rejects["parse_error"].source_uri == "mem://input#line=6"
    assert rejects["parse_error"].detail.startswith("line 6: invalid JSON")
    assert rejects["missing_field"].detail.startswith("line 8: no field 'body'")


def test_jsonl_without_id_field_names_records_by_line_and_skips_blank_lines():
    data = b'{"text": "one"}\n\n[1, 2]\n{"text": ""}\n{"text": 5}\n\xff\xfe{}\n'
    records = read(data, "jsonl")
    assert [(r.source_uri.split("#")[1], getattr(r, "reason", "ok")) for r in records] == [
        ("line=1", "ok"), ("line=3", "parse_error"), ("line=4", "empty"), ("line=5", "missing_field"),
        ("line=6", "parse_error"),
    ]


def test_json_array_and_single_object():
    records = read(SAMPLES / "records" / "tools.json", "json", id_field="id")
    assert [r.source_uri for r in records] == ["mem://input#id=tasksel", "mem://input#id=debconf"]
    document = only_document(read(json.dumps({"text": "single"}).encode(), "json"))
    assert document.source_uri == "mem://input#item=0"
    only_reject(read(b'{"text": "unterminated', "json"), "parse_error")


def test_csv_rows_with_configured_fields_and_a_row_with_too_many_fields():
    records = read(SAMPLES / "records" / "glossary.csv", "csv", text_field="definition", id_field="term",
                   title_field="term")
    assert len(records) == 6 and all(isinstance(r, Document) for r in records)
    assert records[0].title == "Debian package" and records[0].metadata["see_also"] == "dpkg"
    bad = read(b"text,tag\nfine,a\ntoo,many,fields\n", "csv")
    assert isinstance(bad[0], Document)
    assert bad[1].reason == "parse_error" and bad[1].source_uri == "mem://input#line=3"


def test_parquet_rows_are_streamed_in_batches():
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(2500)], "n": list(range(2500))}), buffer,
                   row_group_size=1000)
    records = read(buffer.getvalue(), "parquet")
    assert len(records) == 2500 and records[-1].text == "row 2499" and records[-1].metadata == {"n": 2499}
    assert records[-1].source_uri == "mem://input#row=2499"


def test_parquet_without_the_text_column_is_one_reject_naming_the_columns():
    reject = only_reject(read(SAMPLES / "records" / "releases.parquet", "parquet", text_field="body"),
                         "missing_field")
    assert "id, codename, text" in reject.detail


def test_garbage_named_parquet_is_corrupt():
    only_reject(read(b"PAR1 not really", "parquet"), "corrupt")
