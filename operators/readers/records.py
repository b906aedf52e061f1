"""What readers produce: a `Document` per text, or a `Reject` saying which input was set aside and why."""

import hashlib
from dataclasses import dataclass, field
from typing import Any

# Reject reasons (short codes shown in `<dataset>/collection_rejects`).
REASONS = {
    "unreadable": "the input could not be opened or read",
    "corrupt": "the file is damaged or not in the format its name says",
    "encoding": "the bytes are not text in any encoding we can detect",
    "empty": "no text after extraction",
    "binary": "binary content where text was expected",
    "oversized": "larger than the source's max_bytes",
    "unsupported": "no reader for this file type",
    "parse_error": "a JSON line or CSV row that cannot be parsed",
    "missing_field": "the record has no text in the configured text field",
    "link": "a symbolic link or special file, never followed",
    "duplicate_source": "a second document with the same source_uri (e.g. a repeated id)",
    "fetch_error": "the URL could not be fetched (network error, timeout)",
    "http_status": "the server answered with an error status",
    "disallowed_url": "the URL or a redirect uses a scheme, host or address that is not allowed",
    "over_limit": "beyond the source's max_pages",
}


@dataclass(frozen=True)
class Document:
    text: str
    source_uri: str
    mime_type: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def doc_id(self) -> str:
        """Content hash: the same text gets the same id wherever it comes from."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Reject:
    source_uri: str
    reason: str
    detail: str

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown reject reason {self.reason!r}; known: {sorted(REASONS)}")


class Rejected(Exception):
    """Raised inside a reader or fetcher; the caller turns it into a `Reject` for the input at hand."""

    def __init__(self, reason: str, detail: str):
        if reason not in REASONS:
            raise ValueError(f"unknown reject reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
