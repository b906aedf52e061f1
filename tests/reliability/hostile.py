"""Hostile inputs, generated at test time into a temporary folder (never committed as files).

`write_corpus(root)` fills `root/source` with good files and every kind of bad one the issue lists, plus
`root/outside` that links point to, and returns what the collection stage must make of each input: how many
documents it yields and the reject reasons it must produce. Big inputs (a 200 MB document, a million-line JSONL,
a DOCX that inflates to hundreds of MB) have their own writers because only the memory tests need them.
"""

import io
import json
import os
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import docx

GOOD_TEXT = "Debian packages are installed with apt, which resolves dependencies and calls dpkg. "
DEEP = 100_000  # nesting depth far beyond Python's recursion limit


@dataclass
class Expected:
    documents: int = 0
    rejects: list[str] = field(default_factory=list)  # reason codes, one per rejected input/record
    texts: list[str] = field(default_factory=list)  # substrings the collected documents must contain


@dataclass
class Corpus:
    source: Path
    outside: Path
    expected: dict[str, Expected]  # by path relative to `source`

    @property
    def documents(self) -> int:
        return sum(e.documents for e in self.expected.values())

    @property
    def rejects(self) -> int:
        return sum(len(e.rejects) for e in self.expected.values())


def pdf_bytes(lines: list[str]) -> bytes:
    """A minimal valid one-page PDF whose text pypdf extracts (offsets in the xref table computed)."""
    content = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({line}) '" for line in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def docx_bytes(paragraphs: list[str], heading: str = "Guide") -> bytes:
    document = docx.Document()
    document.add_heading(heading, level=1)
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def write_corpus(root: Path) -> Corpus:
    """Good and hostile inputs side by side; the expectations say what collection must do with each."""
    rng = random.Random(8)
    source, outside = root / "source", root / "outside"
    (source / "nested").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("This file is outside the source folder and must never be collected.")
    expected: dict[str, Expected] = {}

    def put(name: str, data: bytes | str, documents: int = 0, rejects: tuple[str, ...] = (),
            texts: tuple[str, ...] = ()) -> None:
        path = source / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        expected[name] = Expected(documents, list(rejects), list(texts))

    # Good inputs of every format, so "the run succeeds for the good records" has something to keep.
    put("good.txt", "Plain text. " + GOOD_TEXT, 1, texts=("Plain text.",))
    put("good.md", "# Guide\n\n" + GOOD_TEXT, 1, texts=("# Guide",))
    put("good.html", f"<html><head><title>Good</title></head><body><article><h1>Good page</h1><p>{GOOD_TEXT * 4}"
        "</p></article></body></html>", 1, texts=("resolves dependencies",))
    put("good.pdf", pdf_bytes(["A PDF about apt and dpkg.", "Second line of the PDF."]), 1,
        texts=("A PDF about apt and dpkg.",))
    put("good.docx", docx_bytes([GOOD_TEXT, "A second paragraph in the DOCX."]), 1,
        texts=("A second paragraph in the DOCX.",))
    put("nested/unicode name ✓ new\nline.txt", "A file whose name has a newline and a check mark.", 1)

    # Truncated and corrupt documents.
    whole_pdf = pdf_bytes(["This PDF is cut in half."])
    put("truncated.pdf", whole_pdf[: len(whole_pdf) // 3], rejects=("corrupt",))
    put("garbage.pdf", b"%PDF-1.7\n" + rng.randbytes(3000), rejects=("corrupt",))
    whole_docx = docx_bytes([GOOD_TEXT])
    put("truncated.docx", whole_docx[: len(whole_docx) // 2], rejects=("corrupt",))
    put("text_named.docx", "this is plain text, not a zip archive", rejects=("corrupt",))
    # A browser shows a truncated page's text: so must we.
    put("truncated.html", f"<html><head><title>Cut</title></head><body><article><h1>Cut page</h1><p>{GOOD_TEXT * 4}"
        "</p><p>The end of this sentence never arr", 1, texts=("resolves dependencies",))
    put("binary.html", rng.randbytes(2000).replace(b"\x00", b"\x01") + b"\x00" * 10, rejects=("binary",))

    # Encodings.
    put("invalid_utf8.txt", bytes(rng.randrange(0x80, 0x100) for _ in range(4000)), rejects=("encoding",))
    put("latin1.txt", "Résumé of the naïve café owner, written in Latin-1.".encode("latin-1"), 1,
        texts=("Résumé of the naïve café owner",))
    # Mostly UTF-8 with one Latin-1 line (a common concatenation accident): the UTF-8 text must survive intact.
    put("mixed_encoding.txt", ("Überall café, 中文 and naïve UTF-8 text.\n" * 20).encode()
        + "Une ligne en Latin-1: été.\n".encode("latin-1"), 1, texts=("Überall café, 中文",))

    # Binary content behind text extensions; empty and whitespace-only files.
    put("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + rng.randbytes(2000), rejects=("binary",))
    put("executable.md", b"\x7fELF\x02\x01\x01\x00" + rng.randbytes(2000), rejects=("binary",))
    put("empty.txt", b"", rejects=("empty",))
    put("whitespace.md", " \n\t\r\n   \u3000\n", rejects=("empty",))
    put("empty.jsonl", b"", rejects=("empty",))
    put("whitespace.html", "<html><body>  \n </body></html>", rejects=("empty",))

    # Very long lines: one 5 MB line is still one document.
    put("long_line.txt", "word " * 1_000_000, 1)

    # Records: broken lines are rejected one by one, naming the line; the others are kept.
    lines = [
        json.dumps({"text": "First good record."}),
        "{broken json",
        json.dumps([1, 2, 3]),
        json.dumps({"body": "no text field"}),
        json.dumps({"text": "   "}),
        json.dumps({"text": 42}),
        "[" * DEEP,  # deeper than any parser recursion limit
        json.dumps({"text": "Record after the deep one."}),
        "\x00\xff garbage",
        json.dumps({"text": "Last good record, ünïcödé 中文."}),
    ]
    put("records.jsonl", "\n".join(lines) + "\n", 3,
        rejects=("parse_error", "parse_error", "missing_field", "empty", "missing_field", "parse_error",
                 "parse_error"),
        texts=("First good record.", "Record after the deep one.", "Last good record"))
    put("deep.json", '{"text": "deep", "x": ' + "[" * DEEP + "]" * DEEP + "}", rejects=("corrupt",))
    put("deep_ok.json", json.dumps({"text": "Nested but sane.", "x": [[[[{"y": [1]}]]]]}), 1)
    put("ragged.csv", "id,text,title\n1,First CSV row.,A\n2,Too many fields,B,EXTRA,MORE\n3\n4,Fourth CSV row.,D\n",
        2, rejects=("parse_error", "missing_field"), texts=("First CSV row.", "Fourth CSV row."))

    # Archives are not read: a zip bomb and a zip whose members climb out of their folder stay closed.
    put("bomb.zip", zip_bytes({f"layer{i}.txt": b"\0" * 20_000_000 for i in range(5)}), rejects=("unsupported",))
    put("climb.zip", zip_bytes({"../../escaped.txt": b"escaped", "/etc/evil.txt": b"evil"}),
        rejects=("unsupported",))

    # Links and special files: never followed, never read.
    for name, target in [("link_to_outside.txt", outside / "secret.txt"), ("link_dir", outside),
                         ("relative_escape.md", Path("..") / "outside" / "secret.txt"),
                         ("dangling.txt", outside / "missing.txt"), ("nested/link_to_etc.txt", Path("/etc/passwd"))]:
        (source / name).symlink_to(target)
        expected[name] = Expected(rejects=["link"])
    os.mkfifo(source / "pipe.txt")  # reading a FIFO would block the run forever
    expected["pipe.txt"] = Expected(rejects=["link"])
    return Corpus(source, outside, expected)


def write_large_document(path: Path, size: int = 200_000_000) -> None:
    """One text document of `size` bytes, written in 1 MB pieces."""
    piece = (GOOD_TEXT * (1_000_000 // len(GOOD_TEXT) + 1))[:1_000_000].encode()
    with open(path, "wb") as out:
        for _ in range(size // len(piece)):
            out.write(piece)


def write_million_line_jsonl(path: Path, lines: int = 1_000_000, broken_every: int = 1000) -> tuple[int, int]:
    """`lines` short JSON records, every `broken_every`-th one broken; returns (good, broken)."""
    broken = 0
    with open(path, "w", encoding="utf-8") as out:
        for number in range(1, lines + 1):
            if number % broken_every == 0:
                out.write('{"text": "cut off\n')
                broken += 1
            else:
                out.write(f'{{"text": "record {number}"}}\n')
    return lines - broken, broken


def write_docx_bomb(path: Path, inflated: int = 300_000_000) -> None:
    """A valid DOCX of a few hundred KB whose document.xml inflates to `inflated` bytes of paragraphs."""
    paragraph = "<w:p><w:r><w:t>" + "a" * 100_000 + "</w:t></w:r></w:p>"
    template = zipfile.ZipFile(io.BytesIO(docx_bytes(["x"])))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bomb:
        for item in template.infolist():
            if item.filename != "word/document.xml":
                bomb.writestr(item, template.read(item))
                continue
            xml = template.read(item).decode()
            head, tail = xml.split("<w:body>", 1)
            with bomb.open("word/document.xml", "w", force_zip64=True) as member:
                member.write((head + "<w:body>").encode())
                for _ in range(inflated // len(paragraph)):
                    member.write(paragraph.encode())
                member.write(tail.encode())
