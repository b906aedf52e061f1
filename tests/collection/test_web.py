"""Web sources against a real HTTP server on loopback."""

import pytest

from operators.readers import Document, ReadOptions, Reject, SourceFile, fetch_web, read_source
from tests.collection.web_server import serve_site


@pytest.fixture(scope="module")
def site():
    with serve_site() as base:
        yield base


def collect(*args, **kwargs) -> list[Document | Reject]:
    options = ReadOptions(max_bytes=kwargs.get("max_bytes", 50_000_000))
    out = []
    for item in fetch_web(*args, **kwargs):
        out.extend(read_source(item, options) if isinstance(item, SourceFile) else [item])
    return out


def test_pages_from_a_list_keep_title_and_text(site):
    html, text = collect([f"{site}/pinning", f"{site}/notes.txt"])
    assert isinstance(html, Document) and html.title == "Apt pinning"
    assert "priority 990" in html.text and "Home | About" not in html.text
    assert html.source_uri == f"{site}/pinning" and html.mime_type == "text/html"
    assert text.text == "Plain notes about dpkg and APT." and text.mime_type == "text/plain"


def test_sitemap_pages_are_fetched_and_failures_become_rejects(site):
    records = collect(sitemap=f"{site}/sitemap.xml")
    by_uri = {r.source_uri: r for r in records}
    assert len(records) == 4
    assert isinstance(by_uri[f"{site}/pinning"], Document)
    assert isinstance(by_uri[f"{site}/notes.txt"], Document)
    assert by_uri[f"{site}/missing"].reason == "http_status" and "404" in by_uri[f"{site}/missing"].detail
    assert by_uri["http://elsewhere.invalid/page"].reason == "disallowed_url"


def test_sitemap_index_is_followed(site):
    records = collect(sitemap=f"{site}/sitemap-index.xml")
    assert sum(isinstance(r, Document) for r in records) == 2


def test_broken_sitemap_is_one_reject(site):
    [reject] = collect(sitemap=f"{site}/broken-sitemap.xml")
    assert reject.reason == "parse_error" and reject.source_uri.endswith("/broken-sitemap.xml")


def test_redirects_are_followed_only_to_allowed_hosts_and_addresses(site):
    inside, outside, metadata = collect([f"{site}/redirect-in", f"{site}/redirect-out", f"{site}/redirect-metadata"],
                                        allowed_hosts=["127.0.0.1", "169.254.169.254"])
    assert isinstance(inside, Document) and inside.metadata["url"] == f"{site}/pinning"
    assert outside.reason == "disallowed_url" and "elsewhere.invalid" in outside.detail
    assert metadata.reason == "disallowed_url" and "link-local" in metadata.detail


def test_link_local_addresses_are_refused_unless_allowed():
    [reject] = collect(["http://169.254.169.254/latest/meta-data/"])
    assert reject.reason == "disallowed_url" and "link-local" in reject.detail


def test_hosts_outside_the_allow_list_and_other_schemes_are_refused(site):
    [by_host] = collect([f"{site}/pinning"], allowed_hosts=["docs.example.org"])
    [by_scheme] = collect(["file:///etc/passwd"])
    assert by_host.reason == by_scheme.reason == "disallowed_url"


def test_size_and_time_limits(site):
    [big] = collect([f"{site}/big"], max_bytes=1000)
    assert big.reason == "oversized"
    [slow] = collect([f"{site}/slow"], timeout_seconds=0.5)
    assert slow.reason == "fetch_error" and "within 0.5s" in slow.detail


def test_max_pages(site):
    records = collect([f"{site}/pinning", f"{site}/notes.txt"], max_pages=1)
    assert isinstance(records[0], Document) and records[1].reason == "over_limit"
