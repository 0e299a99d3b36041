"""Pure translation of a Pod's container spec into a local process: argv, env, ports.

This is the "image → local command" mapping of the process kubelet. Images are
never pulled; the container's `command` (or, when it is absent, the last path
segment of the image name without tag or digest, e.g.
`ghcr.io/acme/voicefleet-server:0.1` → `voicefleet-server`) is looked up on a PATH
that starts with the project virtualenv's bin dir. Variable expansion and the
downward API follow the kubelet's rules so manifests behave as on a real node.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Mapping
from typing import Any

JsonDict = dict[str, Any]

# `$$` escapes a dollar; `$(NAME)` references a variable. Anything else is literal.
_REFERENCE = re.compile(r"\$\$|\$\(([^)]*)\)")

# (namespace, name) -> the ConfigMap's/Secret's decoded data, or None when it does not exist
Lookup = Callable[[str, str], Mapping[str, str] | None]


class UnsupportedSpec(ValueError):
    """A field the process kubelet cannot honour; surfaces as a container error."""


def expand(value: str, env: Mapping[str, str]) -> str:
    """Expand `$(VAR)` references as Kubernetes does.

    Defined variables are replaced, undefined references are left verbatim, and
    `$$` collapses to `$` so `$$(VAR)` yields the literal text `$(VAR)`.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name and name in env else match.group(0)

    return _REFERENCE.sub(replace, value)


def image_command(image: str) -> str:
    """The executable an image maps to: its last path segment without tag or digest."""
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    name = last.split(":", 1)[0]
    if not name:
        raise UnsupportedSpec(f"cannot derive a command from image {image!r}")
    return name


def field_value(pod: JsonDict, field_path: str, *, pod_ip: str, host_ip: str) -> str:
    """Resolve a downward-API `fieldRef.fieldPath` against the pod."""
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    simple: dict[str, str] = {
        "metadata.name": str(meta.get("name", "")),
        "metadata.namespace": str(meta.get("namespace", "")),
        "metadata.uid": str(meta.get("uid", "")),
        "spec.nodeName": str(spec.get("nodeName", "")),
        "spec.serviceAccountName": str(spec.get("serviceAccountName", "")),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if field_path in simple:
        return simple[field_path]
    mapped = re.fullmatch(r"metadata\.(labels|annotations)\['([^']*)'\]", field_path)
    if mapped:
        return str(meta.get(mapped.group(1), {}).get(mapped.group(2), ""))
    raise UnsupportedSpec(f"fieldRef {field_path!r} is not supported")


def resolve_env(
    container: JsonDict,
    pod: JsonDict,
    *,
    base_env: Mapping[str, str],
    pod_ip: str,
    host_ip: str,
    config_map: Lookup | None = None,
    secret: Lookup | None = None,
) -> dict[str, str]:
    """Build a container's environment in the kubelet's order.

    `base_env` (PATH, HOSTNAME, service variables) comes first, then `envFrom`,
    then `env` entries in order; each `value` may reference any variable defined
    before it. Missing non-optional ConfigMap/Secret keys raise UnsupportedSpec.
    """
    namespace = str(pod.get("metadata", {}).get("namespace", "default"))
    env = dict(base_env)

    def data_of(kind: str, name: str, optional: bool) -> Mapping[str, str]:
        fetch = config_map if kind == "configMap" else secret
        if fetch is None:
            raise UnsupportedSpec(f"{kind} references are not available")
        data = fetch(namespace, name)
        if data is None:
            if optional:
                return {}
            raise UnsupportedSpec(f"{kind} {name!r} not found in {namespace!r}")
        return data

    def lookup(kind: str, ref: JsonDict) -> str | None:
        optional = bool(ref.get("optional", False))
        data = data_of(kind, str(ref.get("name", "")), optional)
        key = str(ref.get("key", ""))
        if key not in data and not optional:
            raise UnsupportedSpec(f"{kind} {ref.get('name')!r} has no key {key!r}")
        return data.get(key)

    for source in container.get("envFrom", []) or []:
        prefix = str(source.get("prefix", ""))
        for kind, ref_field in (("configMap", "configMapRef"), ("secret", "secretRef")):
            ref = source.get(ref_field)
            if ref is not None:
                data = data_of(kind, str(ref.get("name", "")), bool(ref.get("optional", False)))
                for key, value in data.items():
                    env[prefix + key] = value
    for item in container.get("env", []) or []:
        name = str(item["name"])
        if "valueFrom" in item:
            source = item["valueFrom"]
            if "fieldRef" in source:
                path = str(source["fieldRef"]["fieldPath"])
                env[name] = field_value(pod, path, pod_ip=pod_ip, host_ip=host_ip)
            elif "configMapKeyRef" in source or "secretKeyRef" in source:
                kind = "configMap" if "configMapKeyRef" in source else "secret"
                found = lookup(kind, source[f"{kind}KeyRef"])
                if found is not None:
                    env[name] = found
            else:
                raise UnsupportedSpec(f"env {name}: only fieldRef and key refs are supported")
        else:
            env[name] = expand(str(item.get("value", "")), env)
    return env


def container_argv(container: JsonDict, env: Mapping[str, str]) -> list[str]:
    """`command` + `args` expanded against env; the image stands in for a missing command."""
    command = container.get("command") or [image_command(str(container.get("image", "")))]
    args = container.get("args") or []
    return [expand(str(part), env) for part in [*command, *args]]


def resolve_port(port: int | str, container: JsonDict) -> int:
    """A probe/hook port: a number, a numeric string, or a named containerPort."""
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    for entry in container.get("ports", []) or []:
        if entry.get("name") == port:
            return int(entry["containerPort"])
    raise UnsupportedSpec(f"container {container.get('name')!r} has no port named {port!r}")


# -- images, termination messages and memory limits: the kubelet's rules, pure ---------------

PRELOADED_IMAGES = frozenset({"busybox", "alpine", "debian", "ubuntu"})
"""Base images the node "has" although no executable carries their name: their containers
always give a `command`, run from the host's tools (`sh`, `sleep`, …)."""
PRELOADED_PREFIXES = ("ghcr.io/voicefleet/",)
"""The project's own images (built from this checkout, e.g. `voicefleet-control`, which
holds several console scripts): present whatever their name, as after `kind load`."""
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_MAX_BYTES = 4096
"""What the kubelet keeps of the termination-message file."""
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
"""With `FallbackToLogsOnError`, the kubelet quotes at most this much of the log tail."""

_MEMORY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|K|M|G|T|P|E|m)?$")
_MEMORY_FACTORS = {
    None: 1.0,
    "m": 1e-3,
    "k": 1e3,
    "K": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
    "Ei": 2.0**60,
}


def image_pull_error(image: str, policy: str, path: str) -> tuple[str, str] | None:
    """`(reason, message)` when the node cannot "pull" `image`; None when it can.

    The process kubelet's image store is the PATH: an image is present when the
    executable it maps to (see `image_command`) is on it, or it is preloaded (a base
    image, or one of the project's own). A missing image fails as a real node's would:
    `ErrImagePull`, or `ErrImageNeverPull` under `imagePullPolicy: Never`; the caller
    backs off between tries (`ImagePullBackOff`).
    """
    try:
        command = image_command(image)
    except UnsupportedSpec:
        return "InvalidImageName", f'Failed to apply default image tag "{image}": invalid reference'
    if image.startswith(PRELOADED_PREFIXES) or command in PRELOADED_IMAGES:
        return None
    if shutil.which(command, path=path) is not None:
        return None
    if policy == "Never":
        return (
            "ErrImageNeverPull",
            f'Container image "{image}" is not present with pull policy of Never',
        )
    return (
        "ErrImagePull",
        f'failed to pull image "{image}": not found: no executable "{command}" on the '
        "node's PATH (the process kubelet runs an image as the command its name ends in)",
    )


def termination_message(written: bytes, log_tail: bytes, policy: str, exit_code: int) -> str:
    """What goes into `lastState.terminated.message`, by the kubelet's rules.

    The file the container wrote wins (first 4096 bytes). When it is empty, the
    policy is `FallbackToLogsOnError` and the container failed, the end of its log
    (last 80 lines, at most 2048 bytes) stands in.
    """
    text = written[:TERMINATION_MESSAGE_MAX_BYTES].decode(errors="replace")
    if text.strip() or policy != "FallbackToLogsOnError" or exit_code == 0:
        return text
    lines = log_tail.splitlines(keepends=True)[-FALLBACK_LOG_LINES:]
    tail = b"".join(lines)[-FALLBACK_LOG_BYTES:]
    return tail.decode(errors="replace")


def memory_bytes(quantity: object) -> int | None:
    """A memory quantity ("512Mi", "1G", 1048576) in bytes; None when absent or unparsable."""
    if quantity is None:
        return None
    found = _MEMORY.match(str(quantity).strip())
    if found is None:
        return None
    return int(float(found.group(1)) * _MEMORY_FACTORS[found.group(2)])
