"""Serves this folder for the page, on 127.0.0.1, with the headers that let onnxruntime-web use threads.

    python3 serve.py [--port 8080] [--graphs ../../models]

Open http://127.0.0.1:8080/?graph=graphs/NAME.onnx (or pick the graph on the page). The page is static: any web
server will do; this one adds Cross-Origin-Opener-Policy and Cross-Origin-Embedder-Policy, under which the
browser allows SharedArrayBuffer and so WebAssembly threads. Standard library only.
"""

from __future__ import annotations

import argparse
import functools
import http.server
from pathlib import Path
from typing import ClassVar

HERE = Path(__file__).resolve().parent


class Handler(http.server.SimpleHTTPRequestHandler):
    """This folder at /, the graphs folder at /graphs/, cross-origin isolated, quiet."""

    extensions_map: ClassVar[dict[str, str]] = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
        ".onnx": "application/octet-stream",
    }

    def __init__(self, *args, graphs: Path, **kwargs) -> None:
        self.graphs = graphs
        super().__init__(*args, directory=str(HERE), **kwargs)

    def translate_path(self, path: str) -> str:
        if path.startswith("/graphs/"):
            return str(self.graphs / Path(path.split("?")[0]).name)
        return super().translate_path(path)

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def make_server(port: int, graphs: Path) -> http.server.ThreadingHTTPServer:
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Handler, graphs=graphs.resolve()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--graphs", type=Path, default=HERE.parents[1] / "models")
    args = parser.parse_args()
    server = make_server(args.port, args.graphs)
    print(f"http://127.0.0.1:{server.server_address[1]}/  (graphs from {args.graphs}: ?graph=graphs/NAME.onnx)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
