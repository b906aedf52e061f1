"""A small site on a loopback port for the web-source tests: pages, a sitemap, redirects, errors."""

import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE = (b"<html><head><title>Apt pinning</title></head><body><nav>Home | About</nav><article>"
        b"<h1>Apt pinning</h1><p>APT chooses which version of a package to install by looking at the priority "
        b"of every version it knows about. The target release gets priority 990 by default.</p>"
        b"<p>Run apt-cache policy to see the candidate versions with their priorities.</p></article></body></html>")


def site(port: int) -> dict[str, tuple[int, dict[str, str], bytes]]:
    base = f"http://127.0.0.1:{port}"
    sitemap = (f'<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
               f"<url><loc>{base}/pinning</loc></url><url><loc>{base}/notes.txt</loc></url>"
               f"<url><loc>{base}/missing</loc></url><url><loc>http://elsewhere.invalid/page</loc></url>"
               f"</urlset>").encode()
    index = (f'<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
             f"<sitemap><loc>{base}/sitemap.xml</loc></sitemap></sitemapindex>").encode()
    return {
        "/pinning": (200, {"Content-Type": "text/html; charset=utf-8"}, PAGE),
        "/notes.txt": (200, {"Content-Type": "text/plain"}, b"Plain notes about dpkg and APT."),
        "/sitemap.xml": (200, {"Content-Type": "application/xml"}, sitemap),
        "/sitemap-index.xml": (200, {"Content-Type": "application/xml"}, index),
        "/redirect-in": (302, {"Location": "/pinning"}, b""),
        "/redirect-out": (302, {"Location": "http://elsewhere.invalid/pinning"}, b""),
        "/redirect-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
        "/big": (200, {"Content-Type": "text/plain"}, b"x" * 5000),
        "/broken-sitemap.xml": (200, {"Content-Type": "application/xml"}, b"<urlset><url><loc>"),
    }


@contextmanager
def serve_site():
    """Yields the base URL; `/slow` trickles its body so the total time limit trips."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path == "/slow":
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                for _ in range(30):
                    self.wfile.write(b"slow text " * 10)
                    self.wfile.flush()
                    time.sleep(0.1)
                return
            status, headers, body = pages.get(self.path, (404, {}, b"not found"))
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    pages = site(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
