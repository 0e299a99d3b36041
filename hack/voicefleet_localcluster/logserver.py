"""The kubelet's HTTPS endpoint for `kubectl logs`.

`kubectl logs` asks the API server, which connects to the Node's
`status.daemonEndpoints.kubeletEndpoint.Port` on its InternalIP and requests
`/containerLogs/<namespace>/<pod>/<container>`. Serving that one path from the
container log files makes `kubectl logs [-f] [--tail N]` work as on a real node.
Only clients with a certificate from the cluster CA get in (the API server uses
its kubelet-client certificate); `exec`, `attach` and `port-forward` answer 501.
"""

from __future__ import annotations

import contextlib
import http.server
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

KUBELET_HEADER = b"--- voicefleet kubelet "

# (namespace, pod, container) -> (log file, still running?) or None when unknown
LogLookup = Callable[[str, str, str], tuple[Path, Callable[[], bool]] | None]


def tail_lines(data: bytes, count: int | None) -> bytes:
    """The last `count` lines of `data` (all when None), without kubelet marker lines."""
    lines = [line for line in data.splitlines(keepends=True) if not line.startswith(KUBELET_HEADER)]
    if count is not None:
        lines = lines[-count:] if count > 0 else []
    return b"".join(lines)


def _follow(path: Path, offset: int, running: Callable[[], bool]) -> Iterator[bytes]:
    """New complete lines appended after `offset`, until the container stops."""
    pending = b""
    while True:
        with path.open("rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
        offset += len(chunk)
        pending += chunk
        complete, _, pending = pending.rpartition(b"\n")
        if complete:
            yield tail_lines(complete + b"\n", None)
        if not chunk and not running():
            if pending:
                yield pending
            return
        time.sleep(0.2)


class LogServer:
    """A threaded HTTPS server on 127.0.0.1:<port>; `start()` serves in the background."""

    def __init__(
        self,
        *,
        port: int,
        cert: Path,
        key: Path,
        client_ca_pem: bytes,
        lookup: LogLookup,
    ) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        context.load_verify_locations(cadata=client_ca_pem.decode())
        context.verify_mode = ssl.CERT_REQUIRED
        handler = _handler_for(lookup)
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, name="log-server", daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler_for(lookup: LogLookup) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the API server polls with `kubectl logs -f`."""

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            parts = url.path.strip("/").split("/")
            if len(parts) != 4 or parts[0] != "containerLogs":
                self.send_error(501, "only /containerLogs is served by the process kubelet")
                return
            found = lookup(parts[1], parts[2], parts[3])
            if found is None:
                self.send_error(404, f"no container {parts[3]!r} in pod {parts[1]}/{parts[2]}")
                return
            path, running = found
            query = parse_qs(url.query)
            tail = query.get("tailLines", [None])[0]
            follow = query.get("follow", ["false"])[0] == "true"
            data = path.read_bytes() if path.exists() else b""
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
                self.wfile.write(tail_lines(data, int(tail) if tail is not None else None))
                self.wfile.flush()
                if follow:
                    for chunk in _follow(path, len(data), running):
                        self.wfile.write(chunk)
                        self.wfile.flush()

        do_POST = do_GET  # exec/attach/port-forward arrive as POST: answered 501 above

    return Handler
