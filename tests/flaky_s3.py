"""An S3 stand-in that fails on purpose: moto's S3 server behind a WSGI layer that answers a
share of requests with what a real object store sends when it struggles (503 SlowDown, 500
InternalError), cuts downloads short, or stalls. The tests of shared storage run through it."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ERRORS = {
    "503": ("503 Slow Down", b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"),
    "500": ("500 Internal Server Error",
            b"<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>"),
}


@dataclass
class Faults:
    """What to inject: `rate` of the requests (seeded), of `kinds` ('503', '500', 'cut': a GET's
    body stops half-way, 'stall': `stall_s` of silence first), for keys containing `only` (every
    key if empty). `injected` counts (kind, method, key) as they happen."""

    rate: float = 0.0
    kinds: tuple[str, ...] = ("503", "500")
    only: str = ""
    stall_s: float = 5.0
    seed: int = 0
    injected: Counter = field(default_factory=Counter)
    requests: int = 0
    gets: Counter = field(default_factory=Counter)  # GET requests by path (downloads and listings)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def set(self, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self, key, value)

    def pick(self, method: str, key: str) -> str | None:
        with self._lock:
            self.requests += 1
            if method == "GET":
                self.gets[key] += 1
            if self.rate <= 0 or (self.only and self.only not in key) or self._rng.random() >= self.rate:
                return None
            kinds = [k for k in self.kinds if k != "cut" or method == "GET"] or ["503"]
            kind = self._rng.choice(kinds)
            self.injected[(kind, method, key)] += 1
            return kind


class FlakyApp:
    """WSGI middleware: `app` (moto's S3) with `faults` injected."""

    def __init__(self, app: Any, faults: Faults):
        self.app, self.faults = app, faults

    def __call__(self, environ: dict, start_response: Any) -> Iterable[bytes]:
        kind = self.faults.pick(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""))
        if kind is None:
            return self.app(environ, start_response)
        if kind == "stall":
            time.sleep(self.faults.stall_s)
            return self.app(environ, start_response)
        if kind == "cut":
            return self._cut(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length:  # read the request body, as a server does before it answers
            environ["wsgi.input"].read(length)
        status, body = ERRORS[kind]
        start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
        return [body]

    def _cut(self, environ: dict, start_response: Any) -> Iterable[bytes]:
        captured: dict[str, Any] = {}

        def keep(status: str, headers: list, exc_info: Any = None) -> Any:
            captured["status"], captured["headers"] = status, headers
            return lambda _data: None

        body = b"".join(self.app(environ, keep))
        start_response(captured["status"], captured["headers"])  # the full Content-Length ...
        yield body[: len(body) // 2]  # ... and half the bytes, then the connection drops
        raise ConnectionAbortedError("cut short on purpose")


def start_flaky_s3(faults: Faults) -> tuple[Any, str]:
    """Start the server on a free port; returns (the server, 'host:port'). `server.shutdown()` stops it."""
    from moto.server import DomainDispatcherApplication, create_backend_app
    from moto.server import MotoRequestHandler
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, FlakyApp(DomainDispatcherApplication(create_backend_app), faults),
                         threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    return server, f"{host}:{port}"
