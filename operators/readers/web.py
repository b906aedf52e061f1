"""HTTP(S) pages as inputs: a list of URLs and/or a sitemap, fetched with `requests` under guard rails.

Only allowed hosts are fetched, every redirect hop is checked again (never followed blindly), link-local
addresses (169.254.x.x, where cloud metadata services answer) are refused unless allowed, and each body is
bounded in size and in total time. Problems become `Reject`s for that URL.
"""

import ipaddress
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit
from xml.etree import ElementTree

import requests
import urllib3

from operators.readers.records import Reject, Rejected
from operators.readers.sources import SourceFile

MAX_REDIRECTS = 5
MAX_SITEMAP_DEPTH = 3
SPOOL_BYTES = 1_000_000  # bodies above this spill from memory to a temporary file
READ_BYTES = 65536  # at most per read; a read returns what has arrived
USER_AGENT = "datamate-collector/0.1"


@dataclass(frozen=True)
class Fetched:
    url: str  # after redirects
    content_type: str | None
    size: int
    body: tempfile.SpooledTemporaryFile


class Fetcher:
    def __init__(
        self, allowed_hosts: Iterable[str], *, allow_private_addresses: bool = False, timeout_seconds: float = 20.0,
        max_bytes: int = 50_000_000, session: requests.Session | None = None,
    ):
        self.allowed_hosts = {host.lower() for host in allowed_hosts}
        self.allow_private_addresses = allow_private_addresses
        self.timeout_seconds = timeout_seconds
        self.max_bytes = max_bytes
        self.session = session or requests.Session()
        self.session.headers.setdefault("User-Agent", USER_AGENT)

    def check(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise Rejected("disallowed_url", f"{url}: only http and https URLs are fetched")
        host = (parts.hostname or "").lower()
        if host not in self.allowed_hosts:
            raise Rejected("disallowed_url", f"{url}: host {host!r} is not in allowed_hosts")
        if self.allow_private_addresses:
            return
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)}
        except socket.gaierror as error:
            raise Rejected("fetch_error", f"{url}: cannot resolve {host}: {error}") from error
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            ip = getattr(ip, "ipv4_mapped", None) or ip
            if ip.is_link_local or ip.is_unspecified:
                raise Rejected("disallowed_url", f"{url}: {host} resolves to link-local address {ip}")

    def get(self, url: str) -> Fetched:
        deadline = time.monotonic() + self.timeout_seconds
        for _ in range(MAX_REDIRECTS + 1):
            self.check(url)
            try:
                response = self.session.get(url, stream=True, allow_redirects=False, timeout=self.timeout_seconds)
            except requests.RequestException as error:
                raise Rejected("fetch_error", f"{url}: {type(error).__name__}: {error}") from error
            with response:
                if response.is_redirect:
                    url = urljoin(url, response.headers["Location"])
                    continue
                if response.status_code != 200:
                    raise Rejected("http_status", f"{url}: HTTP {response.status_code} {response.reason}")
                return self._download(url, response, deadline)
        raise Rejected("fetch_error", f"{url}: more than {MAX_REDIRECTS} redirects")

    def _download(self, url: str, response: requests.Response, deadline: float) -> Fetched:
        declared = int(response.headers.get("Content-Length") or 0)
        if declared > self.max_bytes:
            raise Rejected("oversized", f"{url}: Content-Length {declared} > max_bytes={self.max_bytes}")
        body = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        size = 0
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Rejected("fetch_error", f"{url}: not complete within {self.timeout_seconds}s")
                # A wall-clock deadline, not a per-read timeout: no single read may wait past it, and read1 returns
                # whatever has arrived, so a server dripping a byte at a time cannot keep the fetch open.
                sock = getattr(response.raw.connection, "sock", None)
                if sock is not None:
                    sock.settimeout(remaining)
                chunk = response.raw.read1(READ_BYTES, decode_content=True)
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_bytes:
                    raise Rejected("oversized", f"{url}: more than max_bytes={self.max_bytes} bytes")
                body.write(chunk)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
            body.close()
            if time.monotonic() >= deadline:
                raise Rejected("fetch_error", f"{url}: not complete within {self.timeout_seconds}s") from error
            raise Rejected("fetch_error", f"{url}: {type(error).__name__}: {error}") from error
        except Rejected:
            body.close()
            raise
        body.seek(0)
        return Fetched(url, response.headers.get("Content-Type"), size, body)


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def sitemap_urls(fetcher: Fetcher, sitemap: str, depth: int = 0) -> Iterator[str | Reject]:
    """Page URLs of a sitemap, following sitemap indexes a few levels deep."""
    try:
        fetched = fetcher.get(sitemap)
    except Rejected as rejected:
        yield Reject(sitemap, rejected.reason, rejected.detail)
        return
    with fetched.body:
        try:
            root = ElementTree.parse(fetched.body).getroot()
        except ElementTree.ParseError as error:
            yield Reject(sitemap, "parse_error", f"sitemap is not valid XML: {error}")
            return
    locations = [el.text.strip() for el in root.iter() if _local_name(el.tag) == "loc" and el.text]
    if _local_name(root.tag) != "sitemapindex":
        yield from locations
        return
    for location in locations:
        if depth + 1 >= MAX_SITEMAP_DEPTH:
            yield Reject(location, "over_limit", f"sitemap index nested deeper than {MAX_SITEMAP_DEPTH}")
            continue
        yield from sitemap_urls(fetcher, urljoin(sitemap, location), depth + 1)


def fetch_web(
    urls: Iterable[str] = (), sitemap: str | None = None, *, allowed_hosts: Iterable[str] | None = None,
    allow_private_addresses: bool = False, timeout_seconds: float = 20.0, max_pages: int = 1000,
    max_bytes: int = 50_000_000, session: requests.Session | None = None,
) -> Iterator[SourceFile | Reject]:
    """Each page fetched into a spooled buffer, as a `SourceFile` for `read_source`; failures as `Reject`s.

    `allowed_hosts` defaults to the hosts of `urls` and `sitemap`.
    """
    urls = list(urls)
    if allowed_hosts is None:
        allowed_hosts = {urlsplit(u).hostname or "" for u in [*urls, *([sitemap] if sitemap else [])]}
    fetcher = Fetcher(
        allowed_hosts, allow_private_addresses=allow_private_addresses, timeout_seconds=timeout_seconds,
        max_bytes=max_bytes, session=session,
    )
    pages = [*urls, *(sitemap_urls(fetcher, sitemap) if sitemap else [])]
    seen: set[str] = set()
    for page in pages:
        if isinstance(page, Reject):
            yield page
            continue
        if page in seen:
            continue
        seen.add(page)
        if len(seen) > max_pages:
            yield Reject(page, "over_limit", f"more than max_pages={max_pages} pages")
            continue
        try:
            fetched = fetcher.get(page)
        except Rejected as rejected:
            yield Reject(page, rejected.reason, rejected.detail)
            continue
        metadata = {"url": fetched.url, "bytes": fetched.size, "content_type": fetched.content_type}
        yield SourceFile(
            uri=page, name=urlsplit(fetched.url).path, size=fetched.size, open=lambda body=fetched.body: body,
            content_type=fetched.content_type, metadata=metadata,
        )
