"""`helm install` of the chart on the real local control plane, then a voice through it.

One install per module (the fixture below): the release namespace enforces the Pod
Security Standard "restricted" (the API server's own PodSecurity admission refuses
any pod that falls short), the operator and the router run as pods under the
chart's ServiceAccounts (the kubelet mounts a token issued for each pod's
ServiceAccount), and the sample voice is served through the router. The last tests
take a permission away from the operator, then uninstall and check nothing is left.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from voicefleet_localcluster import node, stack
from voicefleet_localcluster.testing import LocalCluster, wait_for
from voicefleet_localcluster.voices import simulated_voice

REPO = Path(__file__).resolve().parents[2]
RELEASE = "vfe2e"
NAMESPACE = "vfe2e-system"
OPERATOR = f"{RELEASE}-voicefleet-operator"
ROUTER = f"{RELEASE}-voicefleet-router"
VOICE = "en-us-joe"


class Installed:
    def __init__(self, cluster: LocalCluster, voices: str, notes: str) -> None:
        self.cluster = cluster
        self.notes = notes  # what `helm install` printed
        self.voices = voices  # the namespace the sample voice lives in

    def router_urls(self) -> list[str]:
        pods = self.cluster.ready_pods(NAMESPACE, "app.kubernetes.io/name=voicefleet-router")
        return sorted(f"http://{p['status']['podIP']}:8080" for p in pods)

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        found = self.cluster.get_json(
            "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}"
        )
        return list(found.get("items") or [])


@pytest.fixture(scope="module")
def installed(local_cluster: LocalCluster) -> Iterator[Installed]:
    cluster = local_cluster
    cluster.kubectl_run("create", "namespace", NAMESPACE)
    cluster.kubectl_run(
        "label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted"
    )
    # the voices' namespace enforces "restricted" too: the operator's pods must pass it
    voices = cluster.create_namespace(
        "vfe2e-voices", labels={"pod-security.kubernetes.io/enforce": "restricted"}
    )
    # the chart's defaults for what this test checks: two routers (and their PDB), CRDs
    # removed with the release (so "nothing left" can be checked)
    release = stack.release_for_test(
        cluster,
        release=RELEASE,
        namespace=NAMESPACE,
        voice_namespaces=[voices],
        set_values=("router.replicas=2", "crds.keep=false"),
    )
    try:
        with release as output:
            cluster.kubectl_run("apply", "-n", voices, "-f", str(stack.SAMPLE_VOICE))
            wait_for(
                lambda: stack.voice_ready(cluster, voices, VOICE),
                timeout=180,
                interval=0.5,
                what="sample voice Ready",
            )
            yield Installed(cluster, voices, output)
    finally:
        cluster.delete_namespace(voices)


def test_components_run_as_pods_under_the_charts_service_accounts(installed: Installed) -> None:
    cluster = installed.cluster
    for name, account in ((OPERATOR, OPERATOR), (ROUTER, ROUTER)):
        pods = cluster.ready_pods(
            NAMESPACE, f"app.kubernetes.io/name=voicefleet-{name.split('-')[-1]}"
        )
        assert pods, f"no ready {name} pod"
        for pod in pods:
            assert pod["spec"]["serviceAccountName"] == account
            # the token the kubelet mounted in the container is one the API server
            # issued for the chart's ServiceAccount
            token = cluster.kubectl_run(
                "exec", "-n", NAMESPACE, pod["metadata"]["name"], "--",
                "cat", "/var/run/secrets/kubernetes.io/serviceaccount/token",
            ).stdout  # fmt: skip
            review = {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token.strip()},
            }
            reviewed = json.loads(
                cluster.kubectl_run(
                    "create", "-o", "json", "-f", "-", input=json.dumps(review)
                ).stdout
            )
            assert reviewed["status"]["authenticated"], reviewed["status"]
            user = reviewed["status"]["user"]["username"]
            assert user == f"system:serviceaccount:{NAMESPACE}:{account}"
    routers = cluster.ready_pods(NAMESPACE, "app.kubernetes.io/name=voicefleet-router")
    assert len(routers) == 2
    pdb = cluster.get_json("pdb", ROUTER, "-n", NAMESPACE)
    assert pdb["status"]["currentHealthy"] == 2


def test_install_notes_tell_how_to_call_a_voice(installed: Installed) -> None:
    notes = installed.notes.split("NOTES:", 1)[1]
    assert "kubectl apply -f crds/samples/en-us-joe.yaml" in notes
    assert '"model": "en-us-joe"' in notes
    assert f"svc/{ROUTER}" in notes
    assert f"http://{ROUTER}.{NAMESPACE}.svc:80/v1/audio/speech" in notes


def can_i(cluster: LocalCluster, account: str, *args: str) -> bool:
    proc = cluster.kubectl_run(
        "auth", "can-i", *args, f"--as=system:serviceaccount:{NAMESPACE}:{account}", check=False
    )
    return proc.stdout.strip() == "yes"


def test_rbac_grants_what_each_component_needs_and_no_more(installed: Installed) -> None:
    cluster, ns = installed.cluster, installed.voices
    assert can_i(cluster, OPERATOR, "patch", "deployments", "-n", ns)
    assert can_i(cluster, OPERATOR, "patch", "ttsvoices/scale", "-n", ns)
    assert can_i(cluster, OPERATOR, "patch", "pods", "-n", ns)
    assert not can_i(cluster, OPERATOR, "get", "secrets", "-n", ns)
    assert not can_i(cluster, OPERATOR, "delete", "ttsvoices", "-n", ns)
    assert not can_i(cluster, OPERATOR, "create", "clusterroles")
    assert can_i(cluster, ROUTER, "watch", "ttsvoices", "-n", ns)
    assert can_i(cluster, ROUTER, "list", "pods", "-n", ns)
    assert not can_i(cluster, ROUTER, "patch", "pods", "-n", ns)
    assert not can_i(cluster, ROUTER, "create", "deployments", "-n", ns)
    assert not can_i(cluster, ROUTER, "get", "secrets", "-n", ns)


def test_the_operator_made_the_voice_under_the_charts_rbac(installed: Installed) -> None:
    """The voice's Deployment was written by the operator pod's ServiceAccount."""
    dep = installed.cluster.get_json(
        "deployment", VOICE, "-n", installed.voices, "--show-managed-fields"
    )
    managers = {m["manager"] for m in dep["metadata"]["managedFields"]}
    assert "voicefleet-operator" in managers
    voice = installed.cluster.get_json("ttsvoice", VOICE, "-n", installed.voices)
    assert voice["status"]["readyReplicas"] == 1


def test_speech_through_the_router(installed: Installed) -> None:
    urls = installed.router_urls()
    assert len(urls) == 2
    for url in urls:  # each router replica serves the voice by `namespace/name`
        audio = stack.speak(url, f"{installed.voices}/{VOICE}", "Hello through the router.")
        assert audio[:4] == b"RIFF"
        assert len(audio) > 20_000
    models = httpx.get(f"{urls[0]}/v1/models", timeout=10).json()
    assert models["object"] == "list"
    assert f"{installed.voices}/{VOICE}" in {m["id"] for m in models["data"]}


def test_the_routers_metrics_want_the_releases_token(installed: Installed) -> None:
    """The chart's generated Secret is what the router requires on /metrics (the operator
    sends it: the scale-from-zero test below reads held requests through it)."""
    import base64

    secret = installed.cluster.get_json("secret", f"{ROUTER}-metrics-token", "-n", NAMESPACE)
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert len(token) == 48
    for url in installed.router_urls():
        anonymous = httpx.get(f"{url}/metrics", timeout=10)
        assert anonymous.status_code == 401, anonymous.text
        scraped = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"})
        assert scraped.status_code == 200
        assert "voicefleet_router_pending_requests" in scraped.text


def test_an_unknown_voice_is_a_404_that_lists_the_voices(installed: Installed) -> None:
    url = installed.router_urls()[0]
    response = httpx.post(
        f"{url}/v1/audio/speech",
        json=stack.speech_request("no-such-voice", "Hello."),
        timeout=30,
    )
    assert response.status_code == 404
    assert VOICE in response.json()["error"]["message"]


BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def test_playground_speaks_in_a_real_browser(installed: Installed, tmp_path: Path) -> None:
    """Debian's chromium, driven by Playwright: pick the voice, type, Speak, get audio."""
    from playwright.sync_api import sync_playwright

    url = installed.router_urls()[0]
    model = f"{installed.voices}/{VOICE}"
    shot = Path(os.environ.get("VOICEFLEET_PLAYGROUND_SCREENSHOT") or tmp_path / "playground.png")
    with sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path="/usr/bin/chromium", args=BROWSER_FLAGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 900, "height": 640})
            page.goto(f"{url}/")
            page.wait_for_function(
                "v => [...document.querySelectorAll('#voice option')].some(o => o.value === v)",
                arg=model,
                timeout=30_000,
            )
            page.select_option("#voice", model)
            page.fill("#text", "Hello from the VoiceFleet playground.")
            page.click("#speak")
            page.wait_for_function(
                "document.querySelector('#download').getAttribute('aria-disabled') === 'false'",
                timeout=60_000,
            )
            ttfa = page.inner_text("#ttfa")
            assert re.fullmatch(r"\d+ ms", ttfa), ttfa
            assert "error" not in (page.get_attribute("#status", "class") or "")
            size, magic = page.evaluate(
                """async () => {
                    const r = await fetch(document.querySelector('#download').href);
                    const b = new Uint8Array(await r.arrayBuffer());
                    return [b.length, String.fromCharCode(...b.slice(0, 4))];
                }"""
            )
            assert magic == "RIFF"
            assert size > 20_000
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000


def queued_voice(name: str, **autoscaling: int) -> dict[str, Any]:
    """A simulated voice with room in its queue for the load below."""
    return simulated_voice(name, server={"maxQueue": 256}, autoscaling=autoscaling)


SIMULATED_VOICE = queued_voice(
    "load",
    minReplicas=1,
    maxReplicas=3,
    targetWorkSecondsPerReplica=2,
    scaleDownDelaySeconds=5,
)

PARAGRAPH = (
    "VoiceFleet scales each voice on the seconds of synthesis waiting in its queues, "
    "not on the number of requests, because one paragraph costs as much as twenty short "
    "phrases. This request is long on purpose, so that a handful of them keep a replica busy."
)


def test_load_through_the_router_scales_the_voice_up_and_back_down(installed: Installed) -> None:
    """A simulated voice (service time from the real cost model, no model loaded, so
    replicas add capacity even on two cores) under load through the router."""
    cluster, ns = installed.cluster, installed.voices
    cluster.apply(SIMULATED_VOICE, namespace=ns)
    wait_for(lambda: stack.voice_ready(cluster, ns, "load"), timeout=120, what="load voice Ready")
    url = installed.router_urls()[0]
    stop = threading.Event()
    codes: list[int] = []

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                response = http.post(
                    f"{url}/v1/audio/speech",
                    json=stack.speech_request(f"{ns}/load", PARAGRAPH),
                )
                codes.append(response.status_code)

    def replicas() -> int:
        return int(cluster.get_json("ttsvoice", "load", "-n", ns)["spec"].get("replicas", 0))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: replicas() >= 2, timeout=60, interval=0.5, what="a scale-up under load")
        wait_for(
            lambda: len(cluster.ready_pods(ns, "voicefleet.io/voice=load")) >= 2,
            timeout=60,
            what="the new replica ready",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    wait_for(
        lambda: replicas() == 1, timeout=90, interval=0.5, what="the scale-down after the load"
    )
    assert codes
    assert set(codes) == {200}, f"failed requests through the scale-up/down: {sorted(set(codes))}"
    events = installed.events(ns, "load")
    assert any("replicas" in str(e.get("message", "")) for e in events)
    cluster.kubectl_run("delete", "ttsvoice", "load", "-n", ns, "--wait=false")


ZERO_VOICE = queued_voice(
    "zero",
    minReplicas=0,
    maxReplicas=2,
    scaleDownDelaySeconds=2,
    scaleToZeroIdleSeconds=3,
    coldStartTimeoutSeconds=120,
)


def test_a_request_at_zero_replicas_is_held_by_the_router_and_answered(
    installed: Installed,
) -> None:
    """Scale from zero end to end: router holds -> operator reads the held count ->
    scale subresource -> Deployment -> pod ready -> the held request is answered."""
    cluster, ns = installed.cluster, installed.voices
    cluster.apply(ZERO_VOICE, namespace=ns)

    def replicas() -> int:
        return int(cluster.get_json("ttsvoice", "zero", "-n", ns)["spec"].get("replicas", 0))

    def pods() -> int:
        found = cluster.get_json("pods", "-n", ns, "-l", "voicefleet.io/voice=zero")
        return len(found.get("items") or [])

    wait_for(
        lambda: replicas() == 0 and pods() == 0,
        timeout=120,
        interval=0.5,
        what="the idle voice scaled to zero with no pod left",
    )
    url = installed.router_urls()[0]
    started = time.monotonic()
    with httpx.Client(timeout=150) as http:
        response = http.post(
            f"{url}/v1/audio/speech", json=stack.speech_request(f"{ns}/zero", "Hello from zero.")
        )
    print(f"answered from zero replicas in {time.monotonic() - started:.1f} s")
    assert response.status_code == 200, response.text
    assert response.content[:4] == b"RIFF"
    assert response.headers.get("x-voicefleet-pod", "").startswith(f"{ns}/zero-")
    reasons = {e.get("reason") for e in installed.events(ns, "zero")}
    assert "ScaleFromZero" in reasons, reasons
    cluster.kubectl_run("delete", "ttsvoice", "zero", "-n", ns, "--wait=false")


def test_the_installed_admission_policy_refuses_the_operator_outside_its_voices(
    installed: Installed,
) -> None:
    """The release's ValidatingAdmissionPolicy is in force for its operator's identity: a
    Deployment in kube-system that RBAC would allow is refused (server dry run, so nothing
    is written), while the admin's same request passes."""
    cluster = installed.cluster
    operator_sa = f"system:serviceaccount:{NAMESPACE}:{OPERATOR}"
    probe = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "vfe2e-probe", "namespace": "kube-system"},
        "spec": {
            "selector": {"matchLabels": {"app": "vfe2e-probe"}},
            "template": {
                "metadata": {"labels": {"app": "vfe2e-probe"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            },
        },
    }
    can = cluster.kubectl_run(
        "auth", "can-i", "create", "deployments", "-n", "kube-system", f"--as={operator_sa}"
    )
    assert can.stdout.strip() == "yes"  # RBAC alone would let it through

    def refused() -> str | None:
        # the policy's binding can take a moment to reach the API server's admission cache
        out = cluster.kubectl_run(
            "create",
            "--dry-run=server",
            f"--as={operator_sa}",
            "-f",
            "-",
            input=json.dumps(probe),
            check=False,
        )
        return out.stderr if out.returncode != 0 else None

    message = wait_for(refused, timeout=30, what="the operator's probe refused")
    assert "may write only objects owned by a TTSVoice" in message, message
    admin = cluster.kubectl_run("create", "--dry-run=server", "-f", "-", input=json.dumps(probe))
    assert "created (server dry run)" in admin.stdout


def test_a_removed_permission_is_reported_on_the_voice(installed: Installed) -> None:
    """Take `patch deployments` from the operator: a new voice says what is missing."""
    cluster = installed.cluster
    role = cluster.get_json("clusterrole", OPERATOR)
    original = json.dumps({"rules": role["rules"]})
    for rule in role["rules"]:
        if rule["resources"] == ["deployments"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != "patch"]
    cluster.kubectl_run(
        "patch", "clusterrole", OPERATOR, "--type=merge", "-p", json.dumps({"rules": role["rules"]})
    )
    name = "forbidden-voice"
    try:
        manifest = (stack.SAMPLE_VOICE.read_text()).replace(f"name: {VOICE}", f"name: {name}")
        cluster.apply(manifest, namespace=installed.voices)

        def forbidden() -> str | None:
            for event in installed.events(installed.voices, name):
                if event.get("reason") == "Forbidden":
                    return str(event["message"])
            return None

        message = wait_for(forbidden, timeout=60, what="a Forbidden event on the voice")
        assert 'cannot patch resource "deployments"' in message
        assert f"system:serviceaccount:{NAMESPACE}:{OPERATOR}" in message
        assert "ClusterRole" in message
    finally:
        cluster.kubectl_run("patch", "clusterrole", OPERATOR, "--type=merge", "-p", original)
    # given the permission back, the operator recovers on its own (kopf retries)
    wait_for(
        lambda: cluster.get_json("deployment", name, "-n", installed.voices),
        timeout=60,
        what="the voice's Deployment after the permission came back",
    )
    cluster.kubectl_run("delete", "ttsvoice", name, "-n", installed.voices, "--wait=false")


def test_uninstall_leaves_nothing(installed: Installed) -> None:
    cluster = installed.cluster
    containers = [
        str(status["containerID"]).removeprefix("containerd://")
        for pod in cluster.pods(NAMESPACE)
        for status in pod["status"].get("containerStatuses") or []
        if status.get("containerID")
    ]
    assert containers, "no operator/router containers recorded"
    cluster.kubectl_run("delete", "ttsvoice", "--all", "-n", installed.voices, "--wait=true")
    cluster.helm_run("uninstall", RELEASE, "-n", NAMESPACE, "--wait", timeout=180)

    def leftovers() -> list[str]:
        names: list[str] = []
        namespaced = (
            "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,"
            "poddisruptionbudgets,configmaps,secrets"
        )
        found = cluster.get_json(
            namespaced, "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}"
        )
        names += [f"{i['kind']}/{i['metadata']['name']}" for i in found["items"]]
        found = cluster.get_json("pods", "-n", NAMESPACE)
        names += [f"Pod/{i['metadata']['name']}" for i in found["items"]]
        found = cluster.get_json(
            "clusterroles,clusterrolebindings", "-l", f"app.kubernetes.io/instance={RELEASE}"
        )
        names += [f"{i['kind']}/{i['metadata']['name']}" for i in found["items"]]
        crds = cluster.kubectl_run("get", "crd", "ttsvoices.voicefleet.io", check=False)
        if crds.returncode == 0:
            names.append("CustomResourceDefinition/ttsvoices.voicefleet.io")
        return names

    wait_for(lambda: not leftovers(), timeout=90, what="nothing left of the release")
    # and no running container of it either: the kubelet stopped every one of the release
    wait_for(
        lambda: not set(containers) & set(node.ctr("tasks", "ls", "-q").split()),
        timeout=60,
        what="the operator's and router's containers to stop",
    )
