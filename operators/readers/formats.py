"""One reader per file format: a binary stream in, `Document`s and `Reject`s out.

Record formats (jsonl, csv, parquet) are read record by record; whole-document formats (txt, md, html, json,
pdf, docx) read at most `max_bytes`. A reader never raises for bad input: `read_stream` turns whatever goes
wrong into a `Reject` naming the input, and record formats reject single records (file and line) and go on.
"""

import codecs
import csv
import io
import json
import logging
import posixpath
import re
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, BinaryIO

import charset_normalizer
import pyarrow.parquet as pq
import trafilatura
from lxml import etree
from trafilatura.xml import xmltotxt
from trafilatura.xpaths import BODY_XPATH

from operators.readers.records import Document, Reject, Rejected


@dataclass(frozen=True)
class ReadOptions:
    text_field: str = "text"
    id_field: str | None = None
    title_field: str | None = None
    max_bytes: int = 50_000_000
    html_format: str = "text"  # "text": plain text with the page's structure; "markdown": Markdown (escapes `_`, `*`)


MIME_TYPES = {
    "txt": "text/plain",
    "md": "text/markdown",
    "html": "text/html",
    "json": "application/json",
    "jsonl": "application/jsonl",
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
}
SUFFIXES = {
    ".txt": "txt", ".text": "txt", ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html",
    ".xhtml": "html", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
    ".parquet": "parquet", ".pdf": "pdf", ".docx": "docx",
}
CONTENT_TYPES = {
    **{mime: fmt for fmt, mime in MIME_TYPES.items()},
    "application/xhtml+xml": "html",
    "application/x-ndjson": "jsonl",
    "application/jsonlines": "jsonl",
}
TITLE_MAX_CHARS = 200


def format_for(name: str, content_type: str | None = None) -> str | None:
    """The reader for a file name (by suffix), else for an HTTP Content-Type; None when there is none."""
    suffix = posixpath.splitext(name.lower())[1]
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    if content_type:
        return CONTENT_TYPES.get(content_type.split(";")[0].strip().lower())
    return None


def read_stream(stream: BinaryIO, source_uri: str, fmt: str, options: ReadOptions) -> Iterator[Document | Reject]:
    """Documents and rejects of one input; never raises for bad content."""
    try:
        yield from READERS[fmt](stream, source_uri, options)
    except Rejected as rejected:
        yield Reject(source_uri, rejected.reason, rejected.detail)
    except OSError as error:
        yield Reject(source_uri, "unreadable", f"{type(error).__name__}: {error}")
    except Exception as error:  # why: a damaged file of any kind must not fail the other inputs of the run
        yield Reject(source_uri, "corrupt", f"{fmt} reader failed: {type(error).__name__}: {error}")


# --- whole-document formats ---------------------------------------------------------------------------
def read_limited(stream: BinaryIO, max_bytes: int) -> bytes:
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise Rejected("oversized", f"more than max_bytes={max_bytes} bytes")
    if not data.strip():
        raise Rejected("empty", "no content")
    return data


# Tried when a file is not UTF-8; on a tie (short texts fit several), the earlier one wins: Western European
# first, then Chinese, then the other common CJK and Cyrillic code pages. Rarer code pages (cp775, cp1250, ...)
# are left out because charset-normalizer picks them for short Latin-1 text ("Résumé" → "Rķsumķ").
LEGACY_ENCODINGS = ("cp1252", "gb18030", "big5", "shift_jis", "euc_jp", "euc_kr", "cp1251", "koi8_r")
FALLBACK_LINES_KEPT = 20  # line numbers listed in the metadata of a mostly-UTF-8 file


def decode_text(data: bytes) -> tuple[str, dict[str, Any]]:
    """(text, metadata): UTF-8 (or a BOM's encoding) first; a mostly-UTF-8 file with a few stray lines keeps its
    UTF-8 and decodes those lines as cp1252; otherwise the most likely of LEGACY_ENCODINGS for the whole file."""
    for bom, encoding in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                          (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            return data.decode(encoding), {"encoding": encoding}
    if b"\x00" in data[:8192]:  # valid UTF-8 too, but never in text
        raise Rejected("binary", "NUL bytes in the first 8 KB: not a text file")
    try:
        return data.decode("utf-8-sig"), {"encoding": "utf-8"}
    except UnicodeDecodeError:
        pass
    mixed = _decode_mostly_utf8(data)
    if mixed is not None:
        return mixed
    matches = charset_normalizer.from_bytes(data, cp_isolation=list(LEGACY_ENCODINGS))
    best = matches.best()
    if best is None:
        raise Rejected("encoding", f"not valid UTF-8 and none of {', '.join(LEGACY_ENCODINGS)} fits")
    tied = [m for m in matches if (m.chaos, m.coherence) == (best.chaos, best.coherence)]
    choice = min(tied, key=lambda m: LEGACY_ENCODINGS.index(m.encoding) if m.encoding in LEGACY_ENCODINGS else 99)
    return str(choice), {"encoding": choice.encoding}


def _decode_mostly_utf8(data: bytes) -> tuple[str, dict[str, Any]] | None:
    """Line by line: UTF-8 where a line is valid, cp1252 where not (a concatenation accident). None when most
    non-ASCII lines are not UTF-8: then the file is in one legacy encoding and cp1252 would garble it."""
    lines, fallback, utf8_lines = [], [], 0
    for number, raw in enumerate(data.splitlines(keepends=True), start=1):
        try:
            lines.append(raw.decode("utf-8"))
            utf8_lines += not raw.isascii()
        except UnicodeDecodeError:
            fallback.append(number)
            try:
                lines.append(raw.decode("cp1252"))
            except UnicodeDecodeError:  # the 5 bytes cp1252 leaves unassigned: latin-1 maps every byte
                lines.append(raw.decode("latin-1"))
    if utf8_lines <= len(fallback):
        return None
    return "".join(lines).removeprefix("\ufeff"), {
        "encoding": "utf-8", "fallback_encoding": "cp1252", "fallback_line_count": len(fallback),
        "fallback_lines": fallback[:FALLBACK_LINES_KEPT],
    }


def _document(text: str, source_uri: str, fmt: str, title: str, **metadata: Any) -> Document:
    text = text.strip()
    if not text:
        raise Rejected("empty", f"no text left after {fmt} extraction")
    return Document(text, source_uri, MIME_TYPES[fmt], title.strip()[:TITLE_MAX_CHARS], metadata)


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def read_txt(stream: BinaryIO, source_uri: str, options: ReadOptions) -> Iterator[Document]:
    text, decoded = decode_text(read_limited(stream, options.max_bytes))
    yield _document(text, source_uri, "txt", _first_line(text), **decoded)


def read_md(stream: BinaryIO, source_uri: str, options: ReadOptions) -> Iterator[Document]:
    text, decoded = decode_text(read_limited(stream, options.max_bytes))
    heading = next((line[2:] for line in text.splitlines() if line.startswith("# ")), _first_line(text))
    yield _document(text, source_uri, "md", heading.strip(), **decoded)


def read_html(stream: BinaryIO, source_uri: str, options: ReadOptions) -> Iterator[Document]:
    html, decoded = decode_text(read_limited(stream, options.max_bytes))
    # favor_recall keeps the text of documentation pages that the precision mode cuts.
    extracted = trafilatura.bare_extraction(
        _framed(html), favor_recall=True, include_formatting=True, include_tables=True, include_comments=False,
        include_links=False, include_images=False, with_metadata=True,
    )
    if extracted is None:
        raise Rejected("empty", "no text left after html extraction")
    if options.html_format == "markdown":
        text = xmltotxt(extracted.body, include_formatting=True)
    else:
        text = plain_text(extracted.body)
    yield _document(text or "", source_uri, "html", extracted.title or "", **decoded)


def _framed(html: str):
    """The page as trafilatura should see it to keep its section headings (DocBook pages such as the Debian FAQ and
    handbook lost every one, in any output format and with any of trafilatura's options):
    - an `<a>` without `href` is a link target, not a link: trafilatura counts it as a link with no text, so a
      heading's box holding only `<h2><a id="x"></a>Title</h2>` is dropped as all-link boilerplate;
    - a page with none of the content frames trafilatura looks for (`<article>`, `<main>`, `class="content"`...)
      gets only its "wild" paragraphs, lists and tables recovered, never a heading: its body becomes the frame."""
    tree = trafilatura.load_html(html)
    if tree is None:
        return html  # trafilatura rejects it the same way
    for anchor in tree.xpath("//a[not(@href)]"):
        anchor.tag = "span"
    body = tree.find(".//body")
    if body is not None and not any(frame(tree) for frame in BODY_XPATH):
        article = etree.Element("article")
        article.text, body.text = body.text, None
        article.extend(list(body))
        body.append(article)
    return tree


# Elements of trafilatura's extracted tree (its XML-TEI-like output) that make blocks of their own.
_BLOCKS = frozenset({"head", "p", "list", "table", "quote", "div", "section"})


def plain_text(body) -> str:
    """trafilatura's extracted tree as plain text that keeps the page's structure and none of Markdown's inline
    syntax: headings (as `#`/`##`... lines, so the markdown splitter can cut at them) and paragraphs as blocks
    separated by a blank line, list items as `- ` or `1. ` lines (nested ones indented), a table as one line per
    row with cells separated by ` | `, code blocks verbatim between ``` fences (a `# comment` in them is no
    heading; so is any other block with such a line). The page's characters stay as they are (`WIDGET_PORT`,
    not `WIDGET\\_PORT`)."""
    blocks = [_block(element) for element in body]
    blocks += [_no_heading(" ".join(element.tail.split())) for element in body if element.tail and element.tail.strip()]
    return "\n\n".join(block for block in blocks if block)


_HEADING_LINE = re.compile(r"^[ \t]*#{1,6}(?:[ \t]|$)", re.M)


def _no_heading(text: str) -> str:
    """A block other than a heading with a line that would read as one (a `# comment` of a `<pre>` that trafilatura
    takes for a quote, a cell "# of hosts") goes between fences, where the markdown splitter does not cut."""
    return f"```\n{text}\n```" if _HEADING_LINE.search(text) else text


def _block(element) -> str:
    if element.tag == "code":
        code = "".join(element.itertext()).strip("\n")
        return f"```\n{code}\n```" if code.strip() else ""
    if element.tag == "head":
        heading = _inline(element).replace("\n", " ")
        rend = element.get("rend", "")
        level = int(rend[1]) if re.fullmatch(r"h[1-6]", rend) else 2
        return f"{'#' * level} {heading}" if heading else ""
    if element.tag == "list":
        return "\n".join(_list_lines(element))
    if element.tag == "table":
        return _no_heading("\n".join(" | ".join(_inline(cell) for cell in row if cell.tag == "cell")
                                      for row in element.iter("row")))
    if element.tag != "p" and any(child.tag in _BLOCKS for child in element):
        return "\n\n".join(block for block in map(_block, element) if block)
    return _no_heading(_inline(element))


def _list_lines(element, indent: str = "") -> list[str]:
    ordered = element.get("rend") == "ol"
    lines = []
    for number, item in enumerate((child for child in element if child.tag == "item"), start=1):
        lines.append(f"{indent}{f'{number}.' if ordered else '-'} {_inline(item, skip='list')}")
        for nested in (child for child in item if child.tag == "list"):
            lines.extend(_list_lines(nested, indent + "  "))
    return lines


def _inline(element, skip: str | None = None) -> str:
    """An element's running text: whitespace collapsed, line breaks (`<lb/>`) kept, `skip` children left out."""
    return "\n".join(" ".join(line.split()) for line in _runs(element, skip).split(_LINE_BREAK)).strip()


_LINE_BREAK = "\x00"  # stands for <lb/> while the source's own newlines are collapsed as whitespace


def _runs(element, skip: str | None) -> str:
    parts = [element.text or ""]
    for child in element:
        if child.tag == "lb":
            parts.append(_LINE_BREAK)
        elif child.tag != skip:
            parts.append(_runs(child, skip=None))
        parts.append(child.tail or "")
    return "".join(parts)


class _PdfNotes(logging.Handler):
    """pypdf logs the damage it works around ("EOF marker not found") as warnings, one log line per file with no
    file name. While `read_pdf` reads, they become part of what the reader reports about that file (the Reject's
    detail, or the document's `pdf_warnings`); pypdf's other log records go to the root logger as before."""

    current: ContextVar[list[str] | None] = ContextVar("pdf_notes", default=None)

    def emit(self, record: logging.LogRecord) -> None:
        notes = self.current.get()
        if notes is None:
            logging.getLogger().handle(record)
        else:
            notes.append(record.getMessage())


_pypdf_logger = logging.getLogger("pypdf")
_pypdf_logger.addHandler(_PdfNotes())
_pypdf_logger.propagate = False


@contextmanager
def _pdf_notes() -> Iterator[list[str]]:
    notes: list[str] = []
    token = _PdfNotes.current.set(notes)
    try:
        yield notes
    finally:
        _PdfNotes.current.reset(token)


def read_pdf(stream: BinaryIO, source_uri: str, options: ReadOptions) -> Iterator[Document]:
    import pypdf  # the PDF and DOCX libraries load only when such a file is read (every Dagster process imports us)

    with _pdf_notes() as notes:
        try:
            reader = pypdf.PdfReader(stream)
        except pypdf.errors.PdfReadError as error:
            said = f" (pypdf: {'; '.join(notes)})" if notes else ""
            raise Rejected("corrupt", f"not a readable PDF: {error}{said}") from error
        if reader.is_encrypted and not reader.decrypt(""):
            raise Rejected("unreadable", "the PDF is encrypted with a password")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    if not any(pages):
        raise Rejected("empty", f"no extractable text in {len(pages)} pages (scanned images?)")
    title = (reader.metadata.title if reader.metadata else None) or _first_line(pages[0])
    extra = {"pdf_warnings": notes} if notes else {}
    yield _document("\n\n".join(p for p in pages if p), source_uri, "pdf", str(title), pages=len(pages), **extra)


def check_zip_size(stream: BinaryIO, max_bytes: int) -> None:
    """Reject a zip-based file (DOCX, ...) whose members unpack to more than max_bytes, before it is unpacked:
    a few MB can inflate to GBs. zipfile never yields more than a member's declared size, so the sum holds."""
    try:
        with zipfile.ZipFile(stream) as archive:
            unpacked = sum(member.file_size for member in archive.infolist())
    except zipfile.BadZipFile as error:
        raise Rejected("corrupt", f"not a zip-based document: {error}") from error
    if unpacked > max_bytes:
        raise Rejected("oversized", f"unpacks to {unpacked} bytes, more than max_bytes={max_bytes}")
    stream.seek(0)


def read_docx(stream: BinaryIO, source_uri: str, options: ReadOptions) -> Iterator[Document]:
    import docx
    from docx.table import Table

    check_zip_size(stream, options.max_bytes)
    document = docx.Document(stream)
    blocks = []
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            blocks.extend(" | ".join(cell.text.strip() for cell in row.cells) for row in block.rows)
            continue
        text = block.text.strip()
        style = block.style.name if block.style is not None else ""
        if text and style.startswith("Heading ") and style[8:].isdigit():
            text = "#" * int(style[8:]) + " " + text  # Markdown headings, so chunks can carry them
        elif text and style == "Title":
            text = "# " + text
        if text:
            blocks.append(text)
    title = document.core_properties.title or next((b.lstrip("# ") for b in blocks if b.startswith("#")), "")
    yield _document("\n\n".join(blocks), source_uri, "docx", title)


# --- record formats -----------------------------------------------------------------------------------
def record_to_document(
    record: dict[str, Any], source_uri: str, position: str, fmt: str, options: ReadOptions
) -> Document | Reject:
    """One record (JSON object, CSV row, Parquet/SQL row) → a Document, or a Reject naming the record."""
    where = position.replace("=", " ")  # "line 3", "row 7": what the reject detail names
    record_id = record.get(options.id_field) if options.id_field else None
    uri = f"{source_uri}#id={record_id}" if record_id not in (None, "") else f"{source_uri}#{position}"
    text = record.get(options.text_field)
    if text is None:
        fields = ", ".join(map(str, record)) or "none"
        return Reject(uri, "missing_field", f"{where}: no field '{options.text_field}' (fields: {fields})")
    if not isinstance(text, str):
        return Reject(uri, "missing_field", f"{where}: field '{options.text_field}' is {type(text).__name__}")
    if not text.strip():
        return Reject(uri, "empty", f"{where}: field '{options.text_field}' is blank")
    title = record.get(options.title_field) if options.title_field else None
    metadata = {k: v for k, v in record.items() if k != options.text_field}
    return Document(text.strip(), uri, MIME_TYPES.get(fmt, "text/plain"), str(title or "")[:TITLE_MAX_CHARS],
                    metadata)


def read_json(stream: BinaryIO, source_uri: str, options: ReadOptions) -> Iterator[Document | Reject]:
    try:
        data = json.loads(read_limited(stream, options.max_bytes))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise Rejected("parse_error", f"invalid JSON: {error}") from error
    records = data if isinstance(data, list) else [data]
    for index, record in enumerate(records):
        if isinstance(record, dict):
            yield record_to_document(record, source_uri, f"item={index}", "json", options)
        else:
            yield Reject(f"{source_uri}#item={index}", "parse_error",
                         f"item {index}: expected a JSON object, got {type(record).__name__}")


def read_jsonl(stream: BinaryIO, source_uri: str, options: ReadOptions) -> Iterator[Document | Reject]:
    for number, raw in enumerate(stream, start=1):
        if not raw.strip():
            continue
        where = f"line={number}"
        try:
            record = json.loads(raw.removeprefix(codecs.BOM_UTF8) if number == 1 else raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            yield Reject(f"{source_uri}#{where}", "parse_error", f"line {number}: invalid JSON: {error}")
            continue
        except RecursionError:  # why: json's parser recurses per nesting level; the lines after must still be read
            yield Reject(f"{source_uri}#{where}", "parse_error", f"line {number}: JSON nested too deeply")
            continue
        if not isinstance(record, dict):
            yield Reject(f"{source_uri}#{where}", "parse_error",
                         f"line {number}: expected a JSON object, got {type(record).__name__}")
            continue
        yield record_to_document(record, source_uri, where, "jsonl", options)


def read_csv(stream: BinaryIO, source_uri: str, options: ReadOptions) -> Iterator[Document | Reject]:
    # Documents can be longer than csv's default 128 KB field limit.
    csv.field_size_limit(max(csv.field_size_limit(), options.max_bytes))
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    rows = csv.DictReader(text)
    try:
        header = rows.fieldnames
    except UnicodeDecodeError as error:
        raise Rejected("encoding", f"header is not UTF-8: {error}") from error
    if not header:
        raise Rejected("empty", "no header row")
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as error:
            yield Reject(f"{source_uri}#line={rows.line_num}", "parse_error", f"line {rows.line_num}: {error}")
            continue
        except UnicodeDecodeError as error:
            raise Rejected("encoding", f"after line {rows.line_num}: not UTF-8 ({error})") from error
        where = f"line={rows.line_num}"
        if None in row:
            yield Reject(f"{source_uri}#{where}", "parse_error",
                         f"line {rows.line_num}: more fields than the {len(header)} columns of the header")
            continue
        yield record_to_document(row, source_uri, where, "csv", options)


def read_parquet(stream: BinaryIO, source_uri: str, options: ReadOptions) -> Iterator[Document | Reject]:
    parquet = pq.ParquetFile(stream, pre_buffer=False)  # a row group at a time (see operators.parquet)
    columns = parquet.schema_arrow.names
    if options.text_field not in columns:
        raise Rejected("missing_field", f"no column '{options.text_field}' (columns: {', '.join(columns)})")
    row = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            yield record_to_document(record, source_uri, f"row={row}", "parquet", options)
            row += 1


READERS: dict[str, Callable[[BinaryIO, str, ReadOptions], Iterator[Document | Reject]]] = {
    "txt": read_txt,
    "md": read_md,
    "html": read_html,
    "json": read_json,
    "jsonl": read_jsonl,
    "csv": read_csv,
    "parquet": read_parquet,
    "pdf": read_pdf,
    "docx": read_docx,
}
