"""The one module that talks to the Kubernetes API with the official (sync) client.

kopf watches and patches through its own aiohttp client; everything the
handlers *do* (server-side apply of the owned objects, writing a TTSVoice's
status) goes through `Kube` here, so the rest of the operator stays free of
client types and can be read without knowing the client. `Kube` satisfies the
handlers' Protocol (`cluster.Kube`); it has no reads for them: what handlers
read comes from kopf's indexes.

Every call returns plain JSON dicts (`_preload_content=False`), the same shape
kopf hands to handlers, so the pure core sees one representation.

Nothing happens at import: `make_api_client` builds a client when the CLI asks.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from voicefleet_api.crd import GROUP, PLURAL, VERSION

PEERING_GROUP = "kopf.dev"
PEERING_VERSION = "v1"

FIELD_MANAGER = "voicefleet-operator"
"""Server-side apply field manager (and Event reporter): the operator owns exactly the
fields it sets."""
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
MERGE_CONTENT_TYPE = "application/merge-patch+json"

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """No usable credentials: the kubeconfig is missing/broken and we are not in a pod."""


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (0 when the server was unreachable).

    Callers above this module never see client exception types.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


def _api_error(exc: ApiException) -> KubeError:
    message = exc.reason or ""
    with contextlib.suppress(ValueError, AttributeError):
        message = json.loads(exc.body or "{}").get("message", message)
    return KubeError(int(exc.status or 0), str(message))


def make_api_client(kubeconfig: Path | None, *, pool_size: int = 32) -> k8s_client.ApiClient:
    """Build an API client from an explicit kubeconfig, else in-cluster, else $KUBECONFIG.

    The explicit path wins so a developer can point a local operator anywhere;
    in-cluster comes next (a real pod); `$KUBECONFIG`/`~/.kube/config` last.
    The connection pool is sized to the handler thread pool so parallel
    reconciles do not queue on urllib3 connections.
    """
    configuration = k8s_client.Configuration()
    try:
        if kubeconfig is not None:
            if not kubeconfig.is_file():
                raise ConfigError(f"kubeconfig {kubeconfig} does not exist")
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig), client_configuration=configuration
            )
        else:
            try:
                k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
            except k8s_config.ConfigException:
                k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
    except (k8s_config.ConfigException, OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot load Kubernetes credentials: {exc}") from exc
    configuration.connection_pool_maxsize = pool_size
    return k8s_client.ApiClient(configuration=configuration)


def connection_info(api: k8s_client.ApiClient) -> kopf.ConnectionInfo:
    """kopf's credentials, taken from the same configuration as our own client.

    kopf's built-in client login reads the process-wide default configuration
    and so would ignore `--kubeconfig`; this keeps both clients on one identity.
    """
    cfg = api.configuration
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix(
        "authorization"
    )
    scheme: str | None = None
    token: str | None = None
    if header:
        parts = header.split(" ", 1)
        if len(parts) == 2:
            scheme, token = parts
        else:
            token = parts[0]
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        username=cfg.username or None,
        password=cfg.password or None,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


def _call(fn: Any, *args: Any, missing_ok: bool = False, **kwargs: Any) -> dict[str, Any] | None:
    """Run one client call for its raw JSON; map client errors to `KubeError`.

    With `missing_ok`, a 404 returns None (reads of things that may not exist,
    deletes of things already gone).
    """
    try:
        rsp = fn(*args, _preload_content=False, **kwargs)
    except ApiException as exc:
        if missing_ok and exc.status == 404:
            return None
        raise _api_error(exc) from exc
    except urllib3.exceptions.HTTPError as exc:
        raise KubeError(0, f"API server unreachable: {exc}") from exc
    data: dict[str, Any] = json.loads(rsp.data or b"{}")
    return data


@dataclass
class Kube:
    """Thin, typed wrapper over the handful of API calls the operator makes."""

    api: k8s_client.ApiClient

    def __post_init__(self) -> None:
        self._apps = k8s_client.AppsV1Api(self.api)
        self._core = k8s_client.CoreV1Api(self.api)
        self._policy = k8s_client.PolicyV1Api(self.api)
        self._networking = k8s_client.NetworkingV1Api(self.api)
        self._custom = k8s_client.CustomObjectsApi(self.api)

    # --- owned objects: server-side apply ---------------------------------

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply one Deployment, Service, PodDisruptionBudget or NetworkPolicy.

        Apply (not create/replace) makes a re-run a no-op: the API server merges
        our fields under the manager "voicefleet-operator" and bumps nothing when
        they are unchanged. force=True takes back fields another manager grabbed
        (e.g. someone `kubectl edit`ing the Deployment): the TTSVoice is the
        source of truth.
        """
        kind = obj["kind"]
        name = obj["metadata"]["name"]
        namespace = obj["metadata"]["namespace"]
        methods = {
            "Deployment": self._apps.patch_namespaced_deployment,
            "Service": self._core.patch_namespaced_service,
            "PodDisruptionBudget": self._policy.patch_namespaced_pod_disruption_budget,
            "NetworkPolicy": self._networking.patch_namespaced_network_policy,
        }
        if kind not in methods:
            raise ValueError(f"k8s.apply does not handle kind {kind!r}")
        result = _call(
            methods[kind],
            name,
            namespace,
            dict(obj),
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY_CONTENT_TYPE,
        )
        assert result is not None
        return result

    def delete_pdb(self, namespace: str, name: str) -> bool:
        """Delete a PDB we no longer want; False when it was already gone."""
        gone = _call(
            self._policy.delete_namespaced_pod_disruption_budget, name, namespace, missing_ok=True
        )
        return gone is not None

    def network_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The NetworkPolicy ``name`` as stored; None when there is none."""
        return _call(
            self._networking.read_namespaced_network_policy, name, namespace, missing_ok=True
        )

    def delete_network_policy(self, namespace: str, name: str, uid: str) -> bool:
        """Delete the NetworkPolicy ``name`` only while it is the object ``uid`` (so one
        written meanwhile under that name is not deleted in its place); False when gone."""
        gone = _call(
            self._networking.delete_namespaced_network_policy,
            name,
            namespace,
            body=k8s_client.V1DeleteOptions(preconditions=k8s_client.V1Preconditions(uid=uid)),
            missing_ok=True,
        )
        return gone is not None

    # --- writes on the TTSVoice ---------------------------------------------

    def patch_voice_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch the status subresource (a list such as conditions is replaced whole).

        A voice deleted meanwhile (404) is not an error: there is nothing left to report on.
        """
        _call(
            self._custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": dict(status)},
            _content_type=MERGE_CONTENT_TYPE,
            missing_ok=True,
        )

    def patch_pod_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str]
    ) -> None:
        """Merge annotations into a pod (the autoscaler's pod-deletion-cost); a gone pod is fine."""
        _call(
            self._core.patch_namespaced_pod,
            name,
            namespace,
            {"metadata": {"annotations": dict(annotations)}},
            _content_type=MERGE_CONTENT_TYPE,
            missing_ok=True,
        )

    def post_event(
        self, involved: Mapping[str, str], *, type: str, reason: str, message: str
    ) -> None:
        """Post a core/v1 Event about ``involved`` (an object reference).

        For code outside kopf's handlers (the autoscaler loop), where ``kopf.event`` has
        no queue to post through.
        """
        now = datetime.now(UTC).isoformat()
        body = {
            "metadata": {
                "generateName": f"{involved['name']}.",
                "namespace": involved["namespace"],
            },
            "involvedObject": dict(involved),
            "type": type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "reportingInstance": FIELD_MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        _call(self._core.create_namespaced_event, involved["namespace"], body)

    # --- kopf peering -------------------------------------------------------

    def get_peering_status(self, name: str, namespace: str | None) -> dict[str, Any] | None:
        """The kopf peering object's ``status`` (its peers); None when it or its CRD is absent."""
        if namespace:
            found = _call(
                self._custom.get_namespaced_custom_object,
                PEERING_GROUP,
                PEERING_VERSION,
                namespace,
                "kopfpeerings",
                name,
                missing_ok=True,
            )
        else:
            found = _call(
                self._custom.get_cluster_custom_object,
                PEERING_GROUP,
                PEERING_VERSION,
                "clusterkopfpeerings",
                name,
                missing_ok=True,
            )
        if found is None:
            return None
        status: dict[str, Any] = found.get("status") or {}
        return status

    def ensure_peering(self, name: str, namespace: str | None) -> bool:
        """Create the kopf peering object if absent; True when we created it.

        kopf only *patches* its peering object, so without this every cluster
        would need a manual step before two replicas could coordinate.
        """
        metadata: dict[str, Any] = {"name": name}
        kind = "ClusterKopfPeering"
        if namespace:
            metadata["namespace"] = namespace
            kind = "KopfPeering"
        body = {
            "apiVersion": f"{PEERING_GROUP}/{PEERING_VERSION}",
            "kind": kind,
            "metadata": metadata,
        }
        try:
            if namespace:
                _call(
                    self._custom.create_namespaced_custom_object,
                    PEERING_GROUP,
                    PEERING_VERSION,
                    namespace,
                    "kopfpeerings",
                    body,
                )
            else:
                _call(
                    self._custom.create_cluster_custom_object,
                    PEERING_GROUP,
                    PEERING_VERSION,
                    "clusterkopfpeerings",
                    body,
                )
        except KubeError as exc:
            if exc.status == 409:
                return False
            raise
        return True
