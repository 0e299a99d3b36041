"""voicefleet-operator against the real control plane, as its own least-privilege ServiceAccount.

One operator process (the `voicefleet-operator` console script of this venv) serves
the whole module; it authenticates with a token of the ServiceAccount the chart's RBAC
templates make (``LocalCluster.operator_rbac``), so every test also proves that RBAC is
enough. Pods are containers of the server image on the real node. The operator's log is
printed (and its path kept) when a test fails.
"""

from __future__ import annotations

import io
import wave
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from operatorprocs import (
    PVC_SAMPLE,
    SAMPLE,
    Operator,
    condition,
    events_for,
    exists,
    live_peers,
    merge_patch,
    new_operator,
    owned_by,
    scalable_voice,
    voice,
)

from voicefleet_localcluster import stack
from voicefleet_localcluster.testing import LocalCluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


def test_sample_becomes_ready_voice_that_speaks_then_rolls_on_update_and_survives_restart(
    local_cluster: LocalCluster, cluster_namespace: str, operator: Operator
) -> None:
    ns = cluster_namespace
    local_cluster.kubectl_run("apply", "-n", ns, "-f", str(SAMPLE))
    owner = voice(local_cluster, ns, "en-us-joe")

    dep = wait_for(
        lambda: local_cluster.get_json("deployment", "en-us-joe", "-n", ns),
        timeout=30,
        what="the Deployment",
    )
    svc = local_cluster.get_json("service", "en-us-joe", "-n", ns)
    assert owned_by(dep, owner)
    assert owned_by(svc, owner)
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["selector"] == {"matchLabels": {"voicefleet.io/voice": "en-us-joe"}}
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["voicefleet-server"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert svc["spec"]["selector"] == {"voicefleet.io/voice": "en-us-joe"}
    assert not exists(local_cluster, ns, "pdb", "en-us-joe"), "maxReplicas 1 needs no PDB"

    # The real server in a pod, on its own pod IP.
    pod = wait_for(
        lambda: local_cluster.ready_pods(ns, "voicefleet.io/voice=en-us-joe"),
        timeout=90,
        what="a Ready en-us-joe pod",
    )[0]
    rsp = httpx.post(
        f"http://{pod['status']['podIP']}:8080/v1/audio/speech",
        json=stack.speech_request("en_US-joe-medium", "Hello from the cluster."),
        timeout=60,
    )
    assert rsp.status_code == 200, rsp.text
    with wave.open(io.BytesIO(rsp.content)) as wav:
        assert wav.getframerate() == 22050
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    assert len(samples) / 22050 > 0.5
    assert float(np.sqrt(np.mean((samples / 32768.0) ** 2))) > 0.01, "silent audio"

    def ready_status() -> dict[str, Any] | None:
        obj = voice(local_cluster, ns, "en-us-joe")
        ready = condition(obj, "Ready")
        status = obj.get("status", {})
        if ready and ready["status"] == "True" and status.get("readyReplicas") == 1:
            return obj
        return None

    obj = wait_for(ready_status, timeout=30, what="TTSVoice Ready=True, readyReplicas 1")
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert obj["status"]["endpoint"] == f"http://en-us-joe.{ns}.svc:80"
    assert obj["status"]["engine"] == "piper-onnx"  # no spec.engine, no GPU
    assert obj["status"]["selector"] == "voicefleet.io/voice=en-us-joe"

    # An update rolls the Deployment: new template generation, a second ReplicaSet.
    before = local_cluster.get_json("deployment", "en-us-joe", "-n", ns)
    merge_patch(local_cluster, ns, "en-us-joe", {"spec": {"server": {"maxQueue": 32}}})

    def rolled() -> dict[str, Any] | None:
        d = local_cluster.get_json("deployment", "en-us-joe", "-n", ns)
        env = {
            e["name"]: e.get("value") for e in d["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        return d if env.get("VOICEFLEET_MAX_QUEUE") == "32" else None

    after = wait_for(rolled, timeout=30, what="VOICEFLEET_MAX_QUEUE=32 in the template")
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    wait_for(
        lambda: (
            len(
                local_cluster.get_json("rs", "-n", ns, "-l", "voicefleet.io/voice=en-us-joe")[
                    "items"
                ]
            )
            == 2
        ),
        timeout=30,
        what="a second ReplicaSet",
    )
    generation = voice(local_cluster, ns, "en-us-joe")["metadata"]["generation"]

    def settled() -> bool:
        obj = ready_status()
        d = local_cluster.get_json("deployment", "en-us-joe", "-n", ns)
        st = d["status"]
        done = (
            st.get("updatedReplicas") == st.get("availableReplicas") == st.get("replicas") == 1
            and not st.get("terminatingReplicas")
            and len(local_cluster.pods(ns, "voicefleet.io/voice=en-us-joe")) == 1
        )
        return bool(obj and done and obj["status"]["observedGeneration"] == generation)

    wait_for(
        settled, timeout=120, what="rollout done (old pod gone) and Ready at the new generation"
    )

    # Restart: the resumed operator converges without touching anything.
    rs_before = sorted(
        r["metadata"]["name"]
        for r in local_cluster.get_json("rs", "-n", ns, "-l", "voicefleet.io/voice=en-us-joe")[
            "items"
        ]
    )
    svc_before = local_cluster.get_json("service", "en-us-joe", "-n", ns)
    steady = local_cluster.get_json("deployment", "en-us-joe", "-n", ns)
    voice_before = voice(local_cluster, ns, "en-us-joe")
    assert operator.stop() == 0, "SIGTERM is a clean stop (exit 0)"
    log_size = len(operator.log())
    operator.start()

    def resumed() -> bool:
        lines = operator.log()[log_size:].splitlines()
        return any(f"[{ns}/en-us-joe]" in ln and "Resuming is processed" in ln for ln in lines)

    wait_for(resumed, timeout=30, what="the restarted operator to resume en-us-joe")
    now = local_cluster.get_json("deployment", "en-us-joe", "-n", ns)
    assert now["metadata"]["resourceVersion"] == steady["metadata"]["resourceVersion"]
    assert now["metadata"]["generation"] == steady["metadata"]["generation"]
    assert (
        local_cluster.get_json("service", "en-us-joe", "-n", ns)["metadata"]["resourceVersion"]
        == (svc_before["metadata"]["resourceVersion"])
    )
    # Nothing rewritten on the voice either: not its status, not kopf's annotations.
    assert voice(local_cluster, ns, "en-us-joe") == voice_before
    assert len(local_cluster.get_json("deployments", "-n", ns)["items"]) == 1
    assert len(local_cluster.get_json("services", "-n", ns)["items"]) == 1
    assert (
        sorted(
            r["metadata"]["name"]
            for r in local_cluster.get_json("rs", "-n", ns, "-l", "voicefleet.io/voice=en-us-joe")[
                "items"
            ]
        )
        == rs_before
    )


def test_scale_subresource_drives_replicas_pdb_comes_with_two_pods_and_delete_collects_all(
    local_cluster: LocalCluster, cluster_namespace: str, operator: Operator
) -> None:
    ns = cluster_namespace
    local_cluster.apply(scalable_voice("scaly"), namespace=ns)
    owner = voice(local_cluster, ns, "scaly")
    dep = wait_for(
        lambda: local_cluster.get_json("deployment", "scaly", "-n", ns),
        timeout=30,
        what="Deployment",
    )
    assert dep["spec"]["replicas"] == 0
    assert not exists(local_cluster, ns, "pdb", "scaly"), "no budget below two pods"

    local_cluster.kubectl_run("scale", "ttsvoice", "scaly", "-n", ns, "--replicas=2")
    wait_for(
        lambda: local_cluster.get_json("deployment", "scaly", "-n", ns)["spec"]["replicas"] == 2,
        timeout=30,
        what="Deployment replicas 2 after kubectl scale ttsvoice",
    )
    pdb = local_cluster.get_json("pdb", "scaly", "-n", ns)  # applied before the Deployment
    assert owned_by(pdb, owner)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == {"matchLabels": {"voicefleet.io/voice": "scaly"}}
    wait_for(
        lambda: voice(local_cluster, ns, "scaly")["status"].get("desiredReplicas") == 2,
        timeout=30,
        what="status.desiredReplicas 2",
    )
    local_cluster.kubectl_run("scale", "ttsvoice", "scaly", "-n", ns, "--replicas=0")
    wait_for(
        lambda: local_cluster.get_json("deployment", "scaly", "-n", ns)["spec"]["replicas"] == 0,
        timeout=30,
        what="Deployment replicas back to 0",
    )
    # kept below two pods: an autoscaler crossing 1 <-> 2 neither creates nor deletes it
    kept = local_cluster.get_json("pdb", "scaly", "-n", ns)
    assert kept["metadata"]["uid"] == pdb["metadata"]["uid"]

    # Someone scales the Deployment itself: the voice is the one writer of replicas,
    # so the operator puts it back at once (no waiting for the voice's next change).
    local_cluster.kubectl_run("scale", "deployment", "scaly", "-n", ns, "--replicas=3")
    wait_for(
        lambda: local_cluster.get_json("deployment", "scaly", "-n", ns)["spec"]["replicas"] == 0,
        timeout=30,
        what="Deployment replicas restored to the voice's 0 after kubectl scale deployment",
    )
    assert voice(local_cluster, ns, "scaly")["spec"]["replicas"] == 0

    # Someone deletes the Deployment: it comes back at once, still owned by the voice.
    old_uid = local_cluster.get_json("deployment", "scaly", "-n", ns)["metadata"]["uid"]
    local_cluster.kubectl_run("delete", "deployment", "scaly", "-n", ns, "--wait=true")
    again = wait_for(
        lambda: local_cluster.get_json("deployment", "scaly", "-n", ns),
        timeout=30,
        what="the deleted Deployment re-created",
    )
    assert again["metadata"]["uid"] != old_uid
    assert owned_by(again, owner)

    # maxReplicas down to 1: two pods can never run again, so the budget goes.
    merge_patch(local_cluster, ns, "scaly", {"spec": {"autoscaling": {"maxReplicas": 1}}})
    wait_for(lambda: not exists(local_cluster, ns, "pdb", "scaly"), timeout=30, what="PDB gone")
    assert exists(local_cluster, ns, "deploy", "scaly")

    local_cluster.kubectl_run("delete", "ttsvoice", "scaly", "-n", ns, "--wait=true")
    wait_for(
        lambda: not any(exists(local_cluster, ns, kind, "scaly") for kind in ("deploy", "svc")),
        timeout=60,
        what="Deployment and Service garbage-collected",
    )
    assert operator.proc is not None
    assert operator.proc.poll() is None


def test_missing_pvc_is_degraded_with_a_warning_event_not_a_crash(
    local_cluster: LocalCluster, cluster_namespace: str, operator: Operator
) -> None:
    ns = cluster_namespace
    local_cluster.kubectl_run("apply", "-n", ns, "-f", str(PVC_SAMPLE))
    name = yaml.safe_load(PVC_SAMPLE.read_text())["metadata"]["name"]

    def degraded() -> dict[str, Any] | None:
        cond = condition(voice(local_cluster, ns, name), "Degraded")
        return cond if cond and cond["status"] == "True" else None

    cond = wait_for(degraded, timeout=30, what="Degraded=True")
    assert cond["reason"] == "PVCNotFound"
    assert "piper-voices" in cond["message"]
    ready = condition(voice(local_cluster, ns, name), "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    warnings = wait_for(
        lambda: [e for e in events_for(local_cluster, ns, name) if e["type"] == "Warning"],
        timeout=20,
        what="a Warning Event on the TTSVoice",
    )
    assert any("piper-voices" in e["message"] for e in warnings), warnings
    assert not exists(local_cluster, ns, "deployment", name), (
        "no pods for a model that is not there"
    )
    assert operator.healthy()

    # The claim appears: the voice recovers at once (no pods: replicas 0 keeps the node
    # from running a server whose model file is not really there).
    merge_patch(
        local_cluster, ns, name, {"spec": {"replicas": 0, "autoscaling": {"minReplicas": 0}}}
    )
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "piper-voices"},
        "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    local_cluster.apply(claim, namespace=ns)
    dep = wait_for(
        lambda: local_cluster.get_json("deployment", name, "-n", ns),
        timeout=15,
        what="the Deployment once the PVC exists (well before kopf's 30 s retry)",
    )
    assert dep["spec"]["replicas"] == 0
    assert "PersistentVolumeClaim piper-voices appeared" in operator.log()
    volumes = dep["spec"]["template"]["spec"]["volumes"]
    model = {
        "name": "model",
        "persistentVolumeClaim": {"claimName": "piper-voices", "readOnly": True},
    }
    assert model in volumes
    wait_for(
        lambda: (
            (condition(voice(local_cluster, ns, name), "Degraded") or {}).get("status") == "False"
        ),
        timeout=15,
        what="Degraded=False",
    )
    wait_for(
        lambda: any(e["reason"] == "VoiceRecovered" for e in events_for(local_cluster, ns, name)),
        timeout=15,
        what="a VoiceRecovered Event",
    )


def test_two_operators_peer_only_the_higher_priority_acts_and_the_other_takes_over(
    local_cluster: LocalCluster,
    cluster_namespace: str,
    operator: Operator,
    sa_kubeconfig: Path,
    tmp_path: Path,
) -> None:
    ns = cluster_namespace
    second = new_operator(sa_kubeconfig, tmp_path / "second.log", priority=50)
    second.start()
    try:
        wait_for(lambda: live_peers(local_cluster) == 2, timeout=30, what="two peers registered")
        local_cluster.apply(scalable_voice("peered"), namespace=ns)
        wait_for(
            lambda: voice(local_cluster, ns, "peered").get("status", {}).get("observedGeneration"),
            timeout=30,
            what="the voice reconciled by the active operator",
        )
        assert f"[{ns}/peered]" in operator.log()
        assert f"[{ns}/peered]" not in second.log(), "the paused operator must not act"
        assert "Resuming operations" not in second.log()
        assert "Possibly conflicting operators" not in operator.log() + second.log()

        # The active one leaves (it deletes its own peering record on SIGTERM): the
        # other resumes and reconciles at once, without waiting for a lease to expire.
        assert operator.stop() == 0
        wait_for(
            lambda: "Resuming operations" in second.log(), timeout=30, what="the second to resume"
        )
        merge_patch(local_cluster, ns, "peered", {"spec": {"server": {"maxQueue": 7}}})

        def env_has_queue_7() -> bool:
            d = local_cluster.get_json("deployment", "peered", "-n", ns)
            env = d["spec"]["template"]["spec"]["containers"][0]["env"]
            return {"name": "VOICEFLEET_MAX_QUEUE", "value": "7"} in env

        wait_for(env_has_queue_7, timeout=30, what="the second operator to apply the update")
        assert f"[{ns}/peered]" in second.log()

        # The higher priority comes back: the second pauses again.
        operator.start()
        wait_for(
            lambda: "Pausing operations in favour of" in second.log(),
            timeout=30,
            what="the second to pause for the returning higher-priority operator",
        )
    finally:
        assert second.stop() == 0, second.log()[-3000:]
