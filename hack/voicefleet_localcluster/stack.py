"""`make up` / `make down`: the whole VoiceFleet stack on the local cluster.

`up` reuses a running local cluster (or starts one), `helm upgrade --install`s the
chart with `hack/local-values.yaml` — so the operator and the router run as pods
under the chart's own ServiceAccounts and RBAC — applies the sample voice, waits
until it is Ready, checks that speech comes back through the router, writes the
router's base URL to `<state-dir>/router-url` and prints how to call it. Every
step that can take long prints a progress line first.

`down` stops the cluster (every container with it) and removes what `up` wrote.
The helpers here are shared with tests/e2e so both install the chart one way.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from voicefleet_localcluster import binaries, imagebuild, preflight, prepare
from voicefleet_localcluster.cli import start_kept
from voicefleet_localcluster.controlplane import (
    DEFAULT_NODE,
    ClusterStartError,
    ClusterState,
    ControlPlane,
    stop_cluster,
)
from voicefleet_localcluster.preflight import PreflightError
from voicefleet_localcluster.procs import alive, has_marker
from voicefleet_localcluster.testing import LocalCluster, wait_for

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "voicefleet"
LOCAL_VALUES = REPO / "hack" / "local-values.yaml"
SAMPLE_VOICE = REPO / "crds" / "samples" / "en-us-joe.yaml"
RELEASE = "voicefleet"
RELEASE_NAMESPACE = "voicefleet-system"
SAMPLE_NAME = "en-us-joe"
SAMPLE_NAMESPACE = "default"
ROUTER_SELECTOR = "app.kubernetes.io/name=voicefleet-router"
ROUTER_URL_FILE = "router-url"

Say = Callable[[str], None]


def _say(line: str) -> None:
    print(f"[make up] {line}", file=sys.stderr, flush=True)


def cluster_from_state(state: ClusterState) -> LocalCluster:
    """A `LocalCluster` handle on a cluster started elsewhere (by `up` or the CLI)."""
    return LocalCluster(
        kubeconfig=state.kubeconfig,
        bin_dir=state.bin_dir,
        server=state.server,
        work_dir=state.work_dir,
        node_name=state.node_name,
        state=state,
    )


def running_state(state_dir: Path) -> ClusterState | None:
    """The recorded cluster when all of its processes still run, else None."""
    state_file = state_dir / "state.json"
    if not state_file.exists():
        return None
    state = ClusterState.load(state_file)
    if all(alive(pid) and has_marker(pid, state.cluster_id) for pid in state.pids.values()):
        return state
    return None


def ensure_cluster(state_dir: Path, *, say: Say = _say, timeout: float = 180.0) -> ClusterState:
    """Reuse the running local cluster recorded in `state_dir`, or start a fresh one."""
    state = running_state(state_dir)
    if state is not None:
        say(f"reusing the running local cluster {state.cluster_id} ({state.server})")
        return state
    state_file = state_dir / "state.json"
    if state_file.exists():  # a crashed or half-dead cluster: clear its leftovers first
        say("clearing a stale local cluster")
        stop_cluster(ClusterState.load(state_file))
        state_file.unlink(missing_ok=True)
    say("Kubernetes binaries (built from Go modules on first use: several minutes)")
    bin_dir = binaries.ensure_binaries(log=say)
    say("starting the local control plane and the real node (kubelet + containerd, ~30 s)")
    plane = ControlPlane(
        bin_dir=bin_dir, kubeconfig_path=state_dir / "kubeconfig", node_name=DEFAULT_NODE
    )
    preflight.check()
    state = start_kept(plane, state_file, timeout)
    say(f"control plane up in {state.started_seconds:.1f}s at {state.server}")
    return state


CHART_CRDS = ("ttsvoices.voicefleet.io", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")


def adopt_crds(cluster: LocalCluster, release: str, namespace: str) -> list[str]:
    """Let the release take over CRDs applied earlier with kubectl (README walkthrough).

    Helm refuses to install over objects it does not own, unless they carry its
    ownership metadata; this adds it (Helm's documented adoption path). Returns the
    CRDs adopted.
    """
    adopted = []
    for name in CHART_CRDS:
        found = cluster.kubectl_run("get", "crd", name, "-o", "json", check=False)
        if found.returncode != 0:
            continue
        meta = json.loads(found.stdout)["metadata"]
        annotations = meta.get("annotations") or {}
        if annotations.get("meta.helm.sh/release-name") == release:
            continue
        cluster.kubectl_run(
            "annotate",
            "--overwrite",
            "crd",
            name,
            f"meta.helm.sh/release-name={release}",
            f"meta.helm.sh/release-namespace={namespace}",
        )
        cluster.kubectl_run(
            "label", "--overwrite", "crd", name, "app.kubernetes.io/managed-by=Helm"
        )
        adopted.append(name)
    return adopted


def helm_install(
    cluster: LocalCluster,
    *,
    release: str = RELEASE,
    namespace: str = RELEASE_NAMESPACE,
    values: Sequence[Path] = (LOCAL_VALUES,),
    set_values: Sequence[str] = (),
    timeout: float = 300.0,
) -> str:
    """`helm upgrade --install` the chart from this checkout (idempotent); Helm's output
    (with the chart's NOTES) is returned."""
    adopt_crds(cluster, release, namespace)
    args = ["upgrade", "--install", release, str(CHART_DIR), "--namespace", namespace]
    args += ["--create-namespace"]
    for path in values:
        args += ["--values", str(path)]
    for item in set_values:
        args += ["--set", item]
    return cluster.helm_run(*args, timeout=timeout).stdout


@contextlib.contextmanager
def release_for_test(
    cluster: LocalCluster,
    *,
    release: str,
    namespace: str,
    voice_namespaces: Sequence[str],
    set_values: Sequence[str] = (),
) -> Iterator[str]:
    """The chart installed for a test (local values plus ``set_values``), its operator and
    router ready; yields Helm's output. Removed on the way out, voices first.

    Voices go first, while the operator still runs: kopf's finalizer on each
    voice (it stops the voice's autoscaler daemon) is removed only by a running operator.
    """
    try:
        output = helm_install(cluster, release=release, namespace=namespace, set_values=set_values)
        deployments = [f"{release}-voicefleet-operator", f"{release}-voicefleet-router"]
        wait_deployments(cluster, namespace, deployments, timeout=180, say=print)
        yield output
    finally:
        for ns in voice_namespaces:
            cluster.kubectl_run(
                "delete", "ttsvoice", "--all", "-n", ns, "--timeout=60s", check=False
            )
        cluster.helm_run(
            "uninstall", release, "-n", namespace, "--wait", "--timeout=90s", check=False
        )
        cluster.kubectl_run("delete", "namespace", namespace, "--wait=false", check=False)


def _deployment_ready(cluster: LocalCluster, namespace: str, name: str) -> bool:
    dep = cluster.get_json("deployment", name, "-n", namespace)
    want = int(dep["spec"].get("replicas", 1))
    status = dep.get("status") or {}
    return (
        int(status.get("readyReplicas") or 0) >= want
        and int(status.get("updatedReplicas") or 0) >= want
        and int(status.get("observedGeneration") or 0) >= int(dep["metadata"]["generation"])
    )


def wait_deployments(
    cluster: LocalCluster, namespace: str, names: Sequence[str], *, timeout: float, say: Say
) -> None:
    for name in names:
        say(f"waiting for deployment {namespace}/{name} to be ready")
        wait_for(
            lambda n=name: _deployment_ready(cluster, namespace, n),  # type: ignore[misc]
            timeout=timeout,
            interval=0.5,
            what=f"deployment {namespace}/{name} ready",
        )


def voice_ready(cluster: LocalCluster, namespace: str, name: str) -> bool:
    voice = cluster.get_json("ttsvoice", name, "-n", namespace)
    conditions = (voice.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def router_url(cluster: LocalCluster, namespace: str = RELEASE_NAMESPACE) -> str:
    """Base URL of the router, reachable from the host, once a router pod is ready.

    The router Service's ClusterIP, which kube-proxy routes from the host too (what a
    user reaches in-cluster).
    """
    pods = cluster.ready_pods(namespace, ROUTER_SELECTOR)
    if not pods:
        raise LookupError(f"no ready router pod in {namespace}")
    spec = cluster.get_json("service", f"{RELEASE}-router", "-n", namespace)["spec"]
    return f"http://{spec['clusterIP']}:{spec['ports'][0]['port']}"


def speech_request(model: str, text: str) -> dict[str, Any]:
    """The request body the README and `make up` show (OpenAI's shape)."""
    return {"model": model, "input": text, "voice": "default", "response_format": "wav"}


def speak(base_url: str, model: str, text: str, *, timeout: float = 60.0) -> bytes:
    """POST one speech request; return the WAV bytes or raise with the error body."""
    response = httpx.post(
        f"{base_url}/v1/audio/speech", json=speech_request(model, text), timeout=timeout
    )
    if response.status_code != 200:
        raise RuntimeError(f"speech request failed: {response.status_code} {response.text}")
    if not response.content.startswith(b"RIFF"):
        raise RuntimeError("speech request returned no WAV audio")
    return response.content


def curl_command(base_url: str, model: str = SAMPLE_NAME) -> str:
    body = json.dumps(speech_request(model, "Hello from VoiceFleet."))
    return (
        f"curl -s {base_url}/v1/audio/speech -H 'Content-Type: application/json' "
        f"-d '{body}' -o hello.wav"
    )


def up(state_dir: Path, *, timeout: float = 600.0, say: Say = _say) -> int:
    started = time.monotonic()
    state_dir = state_dir.resolve()
    say = imagebuild.serialized(say)  # builds print progress from two threads below
    try:
        preflight.check()  # before minutes of building: a machine that cannot run the node
        # The images (make images) build beside the Go builds: on a fresh machine
        # debootstrap and pip mostly wait on the network while go build keeps the cores
        # busy. Both end before the cluster's keeper is forked (no thread across a fork).
        say("images: voicefleet-server and voicefleet-control from docker/ (make images)")
        cluster_running = running_state(state_dir) is not None
        if not cluster_running:
            say("Go binaries and kube-router (built from Go modules on first use: minutes)")
        built = prepare.build_node_parts(say, go=not cluster_running)
        state = ensure_cluster(state_dir, say=say)
    except (ClusterStartError, PreflightError, RuntimeError) as exc:
        say(str(exc))
        return 1
    except imagebuild.ImageBuildError as exc:
        say(f"error: {exc}")
        return 1
    cluster = cluster_from_state(state)
    try:
        imagebuild.load_built(built, say)
    except imagebuild.ImageBuildError as exc:
        say(f"error: {exc}")
        return 1
    shown = LOCAL_VALUES.relative_to(REPO)
    say(f"helm upgrade --install {RELEASE} charts/voicefleet (values: {shown})")
    helm_install(cluster, timeout=timeout)
    wait_deployments(
        cluster,
        RELEASE_NAMESPACE,
        [f"{RELEASE}-operator", f"{RELEASE}-router"],
        timeout=timeout,
        say=say,
    )
    say(f"kubectl apply -f {SAMPLE_VOICE.relative_to(REPO)}")
    cluster.kubectl_run("apply", "-n", SAMPLE_NAMESPACE, "-f", str(SAMPLE_VOICE))
    say(f"waiting for TTSVoice {SAMPLE_NAMESPACE}/{SAMPLE_NAME} to be Ready (loads the model)")
    wait_for(
        lambda: voice_ready(cluster, SAMPLE_NAMESPACE, SAMPLE_NAME),
        timeout=timeout,
        interval=0.5,
        what=f"TTSVoice {SAMPLE_NAME} Ready",
    )
    url = wait_for(lambda: router_url(cluster), timeout=timeout, what="a ready router pod")
    say(f"checking speech through the router at {url}")
    wait_for(
        lambda: speak(url, SAMPLE_NAME, "VoiceFleet is up."),
        timeout=120,
        interval=1.0,
        what="speech through the router",
    )
    (state_dir / ROUTER_URL_FILE).write_text(url + "\n")
    say(f"ready in {time.monotonic() - started:.0f}s")
    print(
        f"\nVoiceFleet is up. Router: {url} (also in {state_dir.name}/{ROUTER_URL_FILE})\n\n"
        f"  {curl_command(url)}\n\n"
        f"Playground: {url}/\n"
        f"kubectl:    export KUBECONFIG={state.kubeconfig} PATH={state.bin_dir}:$PATH\n"
        f"Stop:       make down\n",
        flush=True,
    )
    return 0


def down(state_dir: Path, *, say: Say = _say) -> int:
    state_dir = state_dir.resolve()
    state_file = state_dir / "state.json"
    if state_file.exists():
        state = ClusterState.load(state_file)
        started = time.monotonic()
        stop_cluster(state)
        state_file.unlink(missing_ok=True)
        say(f"cluster {state.cluster_id} stopped in {time.monotonic() - started:.1f}s")
    else:
        say("no local cluster recorded; nothing to stop")
    for name in (ROUTER_URL_FILE, "kubeconfig"):
        (state_dir / name).unlink(missing_ok=True)
    return 0
