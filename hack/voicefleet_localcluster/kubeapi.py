"""A deliberately small Kubernetes REST client for the launcher (readiness checks, patches).

The kubelet needs a handful of verbs (get, create, merge-patch, delete, list+watch)
on plain JSON. Going straight to the REST API with httpx keeps every request
visible, lets watches stream without extra threads, and avoids the generated
client's model classes, which would only be converted back to dicts here.
"""

from __future__ import annotations

import json
import os
import ssl
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from voicefleet_localcluster.kubeconfig import KubeConfig

JsonDict = dict[str, Any]


class ApiError(Exception):
    """A non-2xx answer from the API server, carrying its Status message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def ssl_context(config: KubeConfig) -> ssl.SSLContext:
    """A TLS context trusting the cluster CA and presenting the client certificate.

    `load_cert_chain` only reads files, so the PEMs pass through a private temp
    dir that is removed before returning.
    """
    context = ssl.create_default_context(cadata=config.ca_pem.decode())
    with tempfile.TemporaryDirectory(prefix="vf-kubeapi-") as tmp:
        cert = Path(tmp) / "client.crt"
        key = Path(tmp) / "client.key"
        cert.write_bytes(config.cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(config.key_pem)
        context.load_cert_chain(str(cert), str(key))
    return context


class KubeClient:
    """Thread-safe enough for the kubelet: httpx.Client may be shared across threads."""

    def __init__(self, config: KubeConfig, *, timeout: float = 15.0) -> None:
        self.config = config
        self._http = httpx.Client(
            base_url=config.server, verify=ssl_context(config), timeout=timeout
        )

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: JsonDict | None = None,
        content_type: str = "application/json",
    ) -> JsonDict:
        """Send one request; return the decoded JSON body or raise ApiError."""
        content = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": content_type} if content is not None else None
        response = self._http.request(
            method, path, params=dict(params or {}), content=content, headers=headers
        )
        if response.status_code >= 400:
            raise _api_error(response)
        if not response.content:
            return {}
        decoded: JsonDict = response.json()
        return decoded

    def healthy(self, path: str = "/readyz") -> bool:
        """True when a health endpoint answers 200 (its body is plain text, not JSON)."""
        try:
            return self._http.get(path).status_code == 200
        except httpx.HTTPError:
            return False

    def get(self, path: str, **params: str | int) -> JsonDict:
        return self.request("GET", path, params=params)

    def create(self, path: str, body: JsonDict) -> JsonDict:
        return self.request("POST", path, body=body)

    def merge_patch(self, path: str, body: JsonDict) -> JsonDict:
        return self.request("PATCH", path, body=body, content_type="application/merge-patch+json")

    def delete(self, path: str, body: JsonDict | None = None) -> JsonDict:
        return self.request("DELETE", path, body=body)

    def watch(
        self,
        path: str,
        params: Mapping[str, str | int],
        stop: threading.Event,
        *,
        timeout_seconds: int = 120,
    ) -> Iterator[JsonDict]:
        """Yield watch events until the server closes the stream or `stop` is set.

        The server is asked to end the watch after `timeout_seconds`, so a caller
        that loops list→watch never hangs on a dead connection for long.
        """
        query = {**params, "watch": "true", "timeoutSeconds": timeout_seconds}
        timeout = httpx.Timeout(10.0, read=timeout_seconds + 30.0)
        with self._http.stream("GET", path, params=query, timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                raise _api_error(response)
            for line in response.iter_lines():
                if stop.is_set():
                    return
                if line.strip():
                    event: JsonDict = json.loads(line)
                    yield event


def _api_error(response: httpx.Response) -> ApiError:
    try:
        status = response.json()
        message = str(status.get("message", response.text))
        reason = str(status.get("reason", ""))
    except ValueError:
        message, reason = response.text, ""
    return ApiError(response.status_code, reason, message)
