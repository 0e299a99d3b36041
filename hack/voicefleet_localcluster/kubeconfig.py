"""Write and read the self-contained kubeconfig files of a local cluster.

Certificates are embedded (`*-data` fields) rather than referenced by path, so a
kubeconfig stays valid wherever it is copied and never points into a temp dir
that `down` has already removed.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class KubeConfig:
    """The one cluster/user pair a local kubeconfig holds, as PEM bytes."""

    server: str
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    user: str = "user"
    cluster: str = "voicefleet-local"

    def to_dict(self) -> dict[str, Any]:
        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode()

        context = f"{self.user}@{self.cluster}"
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": self.cluster,
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": b64(self.ca_pem),
                    },
                }
            ],
            "users": [
                {
                    "name": self.user,
                    "user": {
                        "client-certificate-data": b64(self.cert_pem),
                        "client-key-data": b64(self.key_pem),
                    },
                }
            ],
            "contexts": [
                {"name": context, "context": {"cluster": self.cluster, "user": self.user}}
            ],
            "current-context": context,
            "preferences": {},
        }

    def write(self, path: Path) -> Path:
        """Write atomically with mode 0600 (it holds a private key)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            yaml.safe_dump(self.to_dict(), handle, sort_keys=False)
        tmp.replace(path)
        return path


def load(path: Path) -> KubeConfig:
    """Read a kubeconfig written by `KubeConfig.write` (current context, embedded data)."""
    doc = yaml.safe_load(path.read_text())
    current = doc["current-context"]
    context = next(c["context"] for c in doc["contexts"] if c["name"] == current)
    cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == context["cluster"])
    user = next(u["user"] for u in doc["users"] if u["name"] == context["user"])
    return KubeConfig(
        server=cluster["server"],
        ca_pem=base64.b64decode(cluster["certificate-authority-data"]),
        cert_pem=base64.b64decode(user["client-certificate-data"]),
        key_pem=base64.b64decode(user["client-key-data"]),
        user=context["user"],
        cluster=context["cluster"],
    )
