"""Certificates and keys for one local cluster, made with the `openssl` CLI.

Every component authenticates with its own client certificate (the apiserver
maps CN to the user and O to groups), exactly as a kubeadm cluster does, so
RBAC and the Node authorizer see the real identities: `system:kube-scheduler`,
`system:kube-controller-manager`, `system:node:<name>`. The openssl CLI is used
instead of a Python crypto library to keep the dependency set small; ECDSA P-256
keys keep generation in the milliseconds.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_REQ_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
"""

CA_DAYS = 3650
LEAF_DAYS = 3650


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM files."""

    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()}")


def _new_key(path: Path) -> None:
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)
    )
    path.chmod(0o600)


def subject(common_name: str, organizations: Sequence[str] = ()) -> str:
    """The openssl `-subj` string; O entries first, as Kubernetes reads them as groups."""
    for part in (common_name, *organizations):
        if "/" in part or "=" in part:
            raise ValueError(f"unsupported character in subject part {part!r}")
    return "".join(f"/O={org}" for org in organizations) + f"/CN={common_name}"


def leaf_extensions(
    *, server: bool, client: bool, dns_names: Sequence[str] = (), ips: Sequence[str] = ()
) -> str:
    """The x509v3 extension section for a leaf certificate."""
    usages = [u for u, on in (("serverAuth", server), ("clientAuth", client)) if on]
    if not usages:
        raise ValueError("a certificate needs serverAuth or clientAuth")
    lines = [
        "[v3]",
        "basicConstraints = critical,CA:FALSE",
        "keyUsage = critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage = {','.join(usages)}",
    ]
    sans = [f"DNS:{d}" for d in dns_names] + [f"IP:{ip}" for ip in ips]
    if sans:
        lines.append(f"subjectAltName = {','.join(sans)}")
    return "\n".join(lines) + "\n"


def make_ca(directory: Path, common_name: str = "voicefleet-local-ca") -> KeyPair:
    """Create a self-signed CA in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    pair = KeyPair(directory / "ca.crt", directory / "ca.key")
    config = directory / "openssl-req.cnf"
    config.write_text(_REQ_CONFIG)
    _new_key(pair.key)
    _openssl(
        "req", "-x509", "-new", "-key", str(pair.key), "-config", str(config),
        "-extensions", "v3_ca", "-subj", subject(common_name), "-days", str(CA_DAYS),
        "-out", str(pair.cert),
    )  # fmt: skip
    return pair


def issue(
    ca: KeyPair,
    directory: Path,
    name: str,
    *,
    common_name: str,
    organizations: Sequence[str] = (),
    server: bool = False,
    client: bool = True,
    dns_names: Sequence[str] = (),
    ips: Sequence[str] = (),
) -> KeyPair:
    """Issue a leaf certificate signed by `ca`, written as `<name>.crt`/`<name>.key`."""
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    config = directory / "openssl-req.cnf"
    if not config.exists():
        config.write_text(_REQ_CONFIG)
    ext.write_text(leaf_extensions(server=server, client=client, dns_names=dns_names, ips=ips))
    _new_key(pair.key)
    _openssl(
        "req", "-new", "-key", str(pair.key), "-config", str(config),
        "-subj", subject(common_name, organizations), "-out", str(csr),
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-set_serial", f"0x{secrets.token_hex(16)}", "-days", str(LEAF_DAYS),
        "-extfile", str(ext), "-extensions", "v3", "-out", str(pair.cert),
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    return pair


def make_service_account_keys(directory: Path) -> tuple[Path, Path]:
    """The key pair the apiserver signs service-account tokens with: (private, public)."""
    private = directory / "sa.key"
    public = directory / "sa.pub"
    _new_key(private)
    _openssl("pkey", "-in", str(private), "-pubout", "-out", str(public))
    return private, public
