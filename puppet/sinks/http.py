"""A small local HTTP server for the viewer pages (HLS, WebRTC): ``http.server`` on a thread.

Bound to 127.0.0.1 by default (the stream is then visible on this machine only; pass a LAN
address or 0.0.0.0 to share it). Sinks register what they serve: a fixed page, a folder of
files (the HLS playlist and segments), or a handler for a POST (the WebRTC offer, a page's
report). Handlers run on the server's request threads.
"""

from __future__ import annotations

import html
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from puppet.errors import OutputError

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # a POST larger than this is refused (SDP offers and reports are a few kB)

CONTENT_TYPES: dict[str, str] = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".ts": "video/mp2t",
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
}


@dataclass(frozen=True)
class Response:
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    status: int = HTTPStatus.OK
    headers: tuple[tuple[str, str], ...] = ()


PostHandler = Callable[[bytes], Response]


@dataclass
class _Routes:
    pages: dict[str, Response] = field(default_factory=dict)
    posts: dict[str, PostHandler] = field(default_factory=dict)
    folders: dict[str, Path] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)  # linked from the index page


class LocalServer:
    """Serves pages, folders and POST handlers on ``host:port`` (port 0: a free one).

    ``start()`` binds (an address in use is an ``OutputError``); ``url(path)`` is the address to
    open; ``close()`` stops it. Routes may be added before or after ``start``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.host = host
        self.port = port
        self._routes = _Routes()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- routes

    def add_page(self, path: str, body: str | bytes, content_type: str = "text/html; charset=utf-8",
                 title: str | None = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        with self._lock:
            self._routes.pages[path] = Response(data, content_type)
            if title:
                self._routes.titles[path] = title

    def add_post(self, path: str, handler: PostHandler) -> None:
        with self._lock:
            self._routes.posts[path] = handler

    def add_folder(self, prefix: str, folder: Path, title: str | None = None) -> None:
        """Serve the plain files directly inside ``folder`` at ``prefix`` + name (no sub-folders);
        ``prefix`` itself serves ``index.html``."""
        if not prefix.endswith("/"):
            raise ValueError(f"a folder prefix ends with '/', got {prefix!r}")
        with self._lock:
            self._routes.folders[prefix] = Path(folder)
            if title:
                self._routes.titles[prefix] = title

    # -- lifecycle

    def start(self) -> None:
        if self._server is not None:
            return
        server_self = self

        class Handler(_Handler):
            server_routes = server_self

        try:
            self._server = _Server((self.host, self.port), Handler)
        except OSError as exc:
            raise OutputError(f"cannot serve on {self.host}:{self.port}: {exc.strerror or exc} "
                              "(choose another --port, or 0 for a free one)") from None
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="http", daemon=True)
        self._thread.start()
        log.info("serving on %s", self.url())

    def url(self, path: str = "/") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    def close(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    # -- dispatch (request threads)

    def _get(self, path: str) -> Response:
        with self._lock:
            page = self._routes.pages.get(path)
            folders = dict(self._routes.folders)
            titles = dict(self._routes.titles)
        if page is not None:
            return page
        for prefix, folder in folders.items():
            if path == prefix.rstrip("/"):
                return Response(b"", status=HTTPStatus.MOVED_PERMANENTLY, headers=(("Location", prefix),))
            if path.startswith(prefix):
                return _file(folder, path[len(prefix):] or "index.html")
        if path == "/":
            return Response(_index(titles).encode(), "text/html; charset=utf-8")
        return Response(b"not found\n", status=HTTPStatus.NOT_FOUND)

    def _post(self, path: str, body: bytes) -> Response:
        with self._lock:
            handler = self._routes.posts.get(path)
        if handler is None:
            return Response(b"not found\n", status=HTTPStatus.NOT_FOUND)
        return handler(body)


def _file(folder: Path, name: str) -> Response:
    if "/" in name or "\\" in name or name.startswith("."):
        return Response(b"not found\n", status=HTTPStatus.NOT_FOUND)
    path = folder / name
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):  # a segment deleted meanwhile
        return Response(b"not found\n", status=HTTPStatus.NOT_FOUND)
    content_type = CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
    # Playlists change every segment; segments never change once listed.
    cache = "no-cache" if path.suffix.lower() in (".m3u8", ".html") else "max-age=60"
    return Response(data, content_type, headers=(("Cache-Control", cache),))


def _index(titles: dict[str, str]) -> str:
    links = "\n".join(f'<li><a href="{html.escape(p)}">{html.escape(t)}</a></li>' for p, t in sorted(titles.items()))
    return ("<!doctype html><meta charset=utf-8><title>puppet stream</title>"
            f"<h1>puppet stream</h1><ul>{links or '<li>nothing is being served</li>'}</ul>")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # A viewer closing its tab mid-reply is not worth a traceback on the user's terminal.
        log.debug("request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server_routes: LocalServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._reply(self.server_routes._get(self.path.split("?", 1)[0]))

    def do_HEAD(self) -> None:  # noqa: N802
        self._reply(self.server_routes._get(self.path.split("?", 1)[0]), body=False)

    def do_POST(self) -> None:  # noqa: N802
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._reply(Response(b"bad length\n", status=HTTPStatus.BAD_REQUEST))
            return
        body = self.rfile.read(length)
        try:
            response = self.server_routes._post(self.path.split("?", 1)[0], body)
        except Exception as exc:  # noqa: BLE001 - a bad request must not kill the server thread
            log.warning("POST %s failed: %s", self.path, exc)
            response = Response(f"{exc}\n".encode(), status=HTTPStatus.BAD_REQUEST)
        self._reply(response)

    def _reply(self, response: Response, body: bool = True) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for key, value in response.headers:
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        log.debug("%s - %s", self.address_string(), format % args)
