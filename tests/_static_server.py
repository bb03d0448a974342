"""A static file server on 127.0.0.1 for the browser tests and benchmark of the web client (clients/web).

Serves one directory; `isolated=True` adds the COOP/COEP headers that make a page cross-origin isolated
(SharedArrayBuffer, so onnxruntime-web can use WASM threads). `gzip=True` compresses what browsers compress.
"""

from __future__ import annotations

import functools
import gzip
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLIENT = REPO / "clients" / "web"


class _Handler(http.server.SimpleHTTPRequestHandler):
    isolated = False
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".mjs": "text/javascript", ".wasm": "application/wasm", ".onnx": "application/octet-stream",
                      ".webmanifest": "application/manifest+json"}

    def end_headers(self) -> None:
        if self.isolated:
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@contextmanager
def static_server(root: Path, isolated: bool = False) -> Iterator[str]:
    handler = type("Handler", (_Handler,), {"isolated": isolated})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def client_dist() -> Path:
    """clients/web/dist, built by `make test` (npm ci && npm run build); a clear failure when it is missing."""
    dist = CLIENT / "dist"
    if not (dist / "malm-web.js").is_file() or not (dist / "ort" / "ort-wasm-simd-threaded.wasm").is_file():
        import os

        import pytest

        if os.environ.get("MALM_SKIP_BROWSER_TESTS", "") not in ("", "0"):
            pytest.skip("web client tests: not built and MALM_SKIP_BROWSER_TESTS is set")
        pytest.fail("the web client is not built: cd clients/web && npm ci && npm run build (make test does it)",
                    pytrace=False)
    return dist


def gzip_size(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), 9))
