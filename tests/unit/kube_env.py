"""Kubernetes' rules for a container's environment and named ports, as a judge for the
operator's builders: the env the kubelet would hand the server is fed to the server's own
settings loader. A test helper (the kubelet's behaviour restated at our seam), not product.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

JsonDict = dict[str, Any]

# `$$` escapes a dollar; `$(NAME)` references a variable. Anything else is literal.
_REFERENCE = re.compile(r"\$\$|\$\(([^)]*)\)")

# (namespace, name) -> the ConfigMap's/Secret's decoded data, or None when it does not exist
Lookup = Callable[[str, str], Mapping[str, str] | None]


class UnsupportedSpec(ValueError):
    """A field this judge does not model."""


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
