"""A static file server for the JavaScript runtime's pages (the demo, the browser tests).

onnxruntime-web needs three things a bare ``python -m http.server`` does not give:
``.mjs`` served as JavaScript and ``.wasm`` as ``application/wasm`` (browsers refuse module
scripts and streaming WebAssembly compilation otherwise), and cross-origin isolation
(``Cross-Origin-Opener-Policy`` / ``Cross-Origin-Embedder-Policy``), without which there is no
``SharedArrayBuffer`` (so no WASM threads) and ``performance.now()`` is coarsened to 100 µs,
too coarse to time one step. The server is ``http.server``'s, on loopback, in a thread.
"""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Mapping
from urllib.parse import unquote

from edgernn.errors import EdgernnError

WEB_ROOT = Path(__file__).resolve().parent / "web"  # runtimes/web: src/, demo/, node_modules/
ORT_WEB = WEB_ROOT / "node_modules" / "onnxruntime-web" / "dist"


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
        ".onnx": "application/octet-stream",
        ".json": "application/json",
    }

    def __init__(self, *args, mounts: Mapping[str, Path], **kwargs) -> None:
        self.mounts = mounts
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        for prefix, folder in self.mounts.items():
            if path.startswith(prefix):
                rest = unquote(path[len(prefix):].split("?", 1)[0].split("#", 1)[0])
                target = (folder / rest).resolve()
                # nothing outside the mounted folder
                return str(target) if target.is_relative_to(folder.resolve()) else str(folder / "__outside__")
        return super().translate_path(path)

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
        pass


def check_web_root() -> None:
    """Says what to run when onnxruntime-web is not installed next to the pages."""
    if not ORT_WEB.is_dir():
        raise EdgernnError(f"onnxruntime-web is not installed in {WEB_ROOT}; run `npm ci` there "
                           "(bash setup.sh does it when npm is present)")


def serve(mounts: Mapping[str, Path] | None = None, *, port: int = 0, host: str = "127.0.0.1",
          root: Path = WEB_ROOT) -> ThreadingHTTPServer:
    """Serve ``root`` (default runtimes/web) and each ``mounts`` folder under its URL prefix
    (``{"/assets/": Path(...)}``) from a background thread; ``port=0`` takes a free port
    (``server.server_address[1]``). Stop it with ``server.shutdown()``."""
    handler = functools.partial(_Handler, directory=str(root), mounts={k: Path(v) for k, v in (mounts or {}).items()})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise EdgernnError(f"cannot serve on {host}:{port}: {e.strerror}; choose another port") from None
    threading.Thread(target=server.serve_forever, daemon=True, name="edgernn-web-server").start()
    return server
