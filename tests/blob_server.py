"""A local stand-in for Planetary Computer's blob storage and SAS token service, on 127.0.0.1.

:class:`BlobServer` answers two kinds of request on one port:

- ``GET /api/sas/v1/token/<account>/<container>``: a new random SAS-shaped token each call
  (``st=..&se=..&sp=rl&sv=..&sr=c&sig=<random>``) with ``msft:expiry`` = now + 60 s +
  :data:`REFRESH_S`, the answer of the real service but 60 + REFRESH_S s instead of about an hour. The
  ``planetary-computer`` SDK fetches a new token once less than 60 s remain, so it asks again after
  REFRESH_S s; the server honours each token for :data:`HONOURED_S` s only, so a read with a token
  that the SDK would no longer hand out fails soon after.
- As an HTTP proxy (``GDAL_HTTP_PROXY``: the request line carries the absolute URL), blob reads
  ``http://<account>.blob.core.windows.net/<container>/<path>?<token>``: the file ``<path>`` under
  the server's root, with HEAD and single byte ranges (206 + Content-Range) as GDAL reads COGs.
  A request whose token is missing, unknown or older than HONOURED_S s gets 403, as Azure answers.

Every blob request is recorded (:class:`BlobRequest`: path, token signature, status).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ACCOUNT, CONTAINER = "pctest", "sentinel2-l2"
BLOB_ROOT = f"http://{ACCOUNT}.blob.core.windows.net/{CONTAINER}"
TOKEN_PATH = "/api/sas/v1/token"
REFRESH_S = 2.0
"""A token is issued with 60 s + REFRESH_S to live: the SDK hands it out for REFRESH_S s, then fetches a new one."""
HONOURED_S = REFRESH_S + 1.0
"""How long the server accepts a token: while the SDK hands it out, plus a second for a read of an href signed at the
end of that time (reads here come within 0.3 s of signing)."""
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass(frozen=True)
class BlobRequest:
    """One blob request: the path in the container, the token's ``sig`` (None without one) and the answer."""

    method: str
    path: str
    sig: str | None
    status: int


class BlobServer(ThreadingHTTPServer):
    """The token service and blob proxy, serving the files under ``root``; see the module docstring."""

    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root.resolve()
        self.issued: dict[str, float] = {}  # sig -> time.monotonic() when issued, in order of issue
        self.requests: list[BlobRequest] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    @property
    def sas_url(self) -> str:
        """The token service's root, ``PC_SDK_SAS_URL`` of the SDK."""
        return f"http://{self.address}{TOKEN_PATH}"

    def __enter__(self) -> BlobServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join()

    def issue_token(self) -> dict[str, str]:
        now = dt.datetime.now(dt.UTC)
        sig = secrets.token_urlsafe(24)
        with self._lock:
            self.issued[sig] = time.monotonic()
        expiry = (now + dt.timedelta(seconds=60 + REFRESH_S)).isoformat().replace("+00:00", "Z")
        start = now.isoformat(timespec="seconds").replace("+00:00", "Z")
        return {"token": f"st={start}&se={expiry}&sp=rl&sv=2024-05-04&sr=c&sig={sig}", "msft:expiry": expiry}

    def honours(self, sig: str | None) -> bool:
        with self._lock:
            issued = self.issued.get(sig) if sig else None
        return issued is not None and time.monotonic() - issued <= HONOURED_S

    def record(self, request: BlobRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def blob_requests(self) -> list[BlobRequest]:
        with self._lock:
            return list(self.requests)


class _Handler(BaseHTTPRequestHandler):
    server: BlobServer
    protocol_version = "HTTP/1.1"  # keep-alive, as GDAL reads many ranges of one file
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms wait for a delayed ACK

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        if self.path.startswith(f"{TOKEN_PATH}/"):
            account, _, container = self.path.removeprefix(f"{TOKEN_PATH}/").partition("/")
            if (account, container) != (ACCOUNT, CONTAINER):
                self._answer(HTTPStatus.NOT_FOUND, f"no container {account}/{container}".encode())
            else:
                self._answer(HTTPStatus.OK, json.dumps(self.server.issue_token()).encode(), "application/json")
        else:
            self._blob(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._blob(body=False)

    def _blob(self, body: bool) -> None:
        url = urlsplit(self.path)
        if f"{url.scheme}://{url.netloc}{url.path}".startswith(f"{BLOB_ROOT}/"):
            path = url.path.removeprefix(f"/{CONTAINER}/")
        else:
            self._answer(HTTPStatus.NOT_FOUND, f"not a blob of {BLOB_ROOT}: {self.path}".encode(), body=body)
            return
        sig = parse_qs(url.query).get("sig", [None])[0]
        file = (self.server.root / path).resolve()
        if not self.server.honours(sig):
            status, content, headers = HTTPStatus.FORBIDDEN, b"AuthenticationFailed: SAS token missing or expired", {}
        elif not file.is_relative_to(self.server.root) or not file.is_file():
            status, content, headers = HTTPStatus.NOT_FOUND, b"BlobNotFound", {}
        else:
            status, content, headers = self._content(file)
        self.server.record(BlobRequest(self.command, path, sig, int(status)))
        self._answer(status, content, "application/octet-stream", headers, body=body)

    def _content(self, file: Path) -> tuple[HTTPStatus, bytes, dict[str, str]]:
        data = file.read_bytes()
        match = _RANGE.fullmatch(self.headers.get("Range", ""))
        if match is None:
            return HTTPStatus.OK, data, {"Accept-Ranges": "bytes"}
        start = int(match[1])
        end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
        if start > end:
            return HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, b"", {"Content-Range": f"bytes */{len(data)}"}
        return (HTTPStatus.PARTIAL_CONTENT, data[start:end + 1],
                {"Accept-Ranges": "bytes", "Content-Range": f"bytes {start}-{end}/{len(data)}"})

    def _answer(self, status: HTTPStatus, content: bytes, content_type: str = "text/plain",
                headers: dict[str, str] | None = None, body: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(content)

    def log_message(self, format: str, *args) -> None:  # noqa: A002  (http.server's signature)
        pass  # the requests are recorded instead
