"""The process kubelet: a Node whose pods are local processes on loopback addresses.

It authenticates as `system:node:<name>` (group `system:nodes`), so the Node
authorizer and the NodeRestriction admission plugin constrain it exactly as they
would a real kubelet. It

- registers its Node (capacity: cpu, memory, pods, `nvidia.com/gpu`) and keeps
  the Node's Ready condition and its Lease in `kube-node-lease` fresh, which is
  what keeps the node-lifecycle controller from tainting it `not-ready`;
- list+watches pods with `spec.nodeName=<name>` and runs one `PodWorker` thread
  per pod. A worker gives the pod an address 127.0.X.Y, starts each container's
  argv (see `podspec`) in its own process group with output appended to
  `<root>/pods/<ns>_<name>_<uid>/<container>.log`, runs probes, restarts per
  `restartPolicy` with back-off, writes status when it changes, and on deletion
  runs `preStop`, SIGTERM, waits out the grace period, SIGKILLs and completes
  the deletion with grace 0.

Limits (documented in docs/localcluster.md): no images, volumes, init
containers, resource enforcement or network isolation; a kubelet restart
restarts the pods' processes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx

from voicefleet_localcluster import kubeconfig
from voicefleet_localcluster.ipam import IpAllocator, PodNetworkClaim
from voicefleet_localcluster.kubeapi import ApiError, KubeClient
from voicefleet_localcluster.logserver import LogServer
from voicefleet_localcluster.podspec import (
    DEFAULT_TERMINATION_MESSAGE_PATH,
    UnsupportedSpec,
    container_argv,
    image_pull_error,
    memory_bytes,
    resolve_env,
    resolve_port,
    termination_message,
)
from voicefleet_localcluster.podstatus import (
    ContainerView,
    Termination,
    build_pod_status,
    timestamp,
)
from voicefleet_localcluster.probes import ProbeTracker, parse_probe, run_probe
from voicefleet_localcluster.procs import MARKER_ENV, group_alive, terminate_groups

log = logging.getLogger("voicefleet.kubelet")

JsonDict = dict[str, Any]
HOST_IP = "127.0.0.1"
LOG_PATH_ANNOTATION = "voicefleet.io/log-path"
LOG_DIR_ANNOTATION = "voicefleet.io/log-dir"
POD_IP_ANNOTATION = "voicefleet.io/pod-ip"
GPU_RESOURCE = "nvidia.com/gpu"
LEASE_SECONDS = 40
HEARTBEAT_SECONDS = 10.0
SA_TOKEN_SECONDS = 7 * 24 * 3600  # not refreshed: local clusters live hours, not weeks
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class KubeletConfig:
    """Everything the kubelet needs; built from CLI flags."""

    kubeconfig: Path
    node_name: str
    root_dir: Path
    cluster_id: str
    path_prefix: Path
    gpus: int = 4
    cpu: str = "32"
    memory: str = "128Gi"
    max_pods: int = 110
    kubernetes_version: str = "v1.34.4"
    sync_interval: float = 0.5
    restart_backoff_cap: float = 30.0
    labels: Mapping[str, str] = field(default_factory=dict)
    # HTTPS endpoint for `kubectl logs` (off unless a serving certificate is given)
    port: int = 0
    serving_cert: Path | None = None
    serving_key: Path | None = None


def micro_time(moment: datetime) -> str:
    """The MicroTime format Leases use."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def restart_backoff(restarts: int, cap: float) -> float:
    """1 s, 2 s, 4 s … capped: the kubelet's CrashLoopBackOff, scaled down for tests."""
    return float(min(cap, 2 ** min(restarts, 16)))


def _rss_bytes(pid: int) -> int:
    """Resident memory of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/statm").read_text().split()
    except OSError:
        return 0
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE") if len(fields) > 1 else 0


def should_restart(restart_policy: str, exit_code: int) -> bool:
    return restart_policy == "Always" or (restart_policy == "OnFailure" and exit_code != 0)


class ContainerRuntime:
    """One container of one pod: its process, restarts and probes."""

    def __init__(self, worker: PodWorker, spec: JsonDict) -> None:
        self.worker = worker
        self.spec = spec
        self.name = str(spec["name"])
        self.image = str(spec.get("image", ""))
        self.log_path = worker.pod_dir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}
        self.state: str = "waiting"
        self.waiting_reason = "ContainerCreating"
        self.waiting_message = ""
        self.restart_count = 0
        self.runs = 0
        self.start_failures = 0  # consecutive; spaces out retries of a broken spec
        self.started_at: datetime | None = None
        self.started_mono = 0.0
        self.next_start = 0.0
        self.termination: Termination | None = None
        self.last_termination: Termination | None = None
        self.readiness: ProbeTracker | None = None
        self.liveness: ProbeTracker | None = None
        self.startup: ProbeTracker | None = None
        self.ready = False
        self.done = False  # terminated for good (restart policy says no)
        # No mounts here: the one file a real kubelet mounts into every container, the
        # termination-message file, lives in the pod dir, and env values naming the
        # container's terminationMessagePath are pointed at it.
        self.termination_path = str(
            spec.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH
        )
        self.termination_policy = str(spec.get("terminationMessagePolicy") or "File")
        self.termination_file = worker.pod_dir / f"{self.name}.termination-log"
        self.log_offset = 0  # where this run's output starts in the log (for the fallback)
        limits = (spec.get("resources") or {}).get("limits") or {}
        self.memory_limit = memory_bytes(limits.get("memory"))
        self.pull_failures = 0

    # -- lifecycle -------------------------------------------------------------------

    def tick(self, now: float) -> None:
        if self.proc is None:
            if not self.done and now >= self.next_start:
                self.start(now)
            return
        code = self.proc.poll()
        if code is not None:
            self._exited(code, now, "Completed" if code == 0 else "Error")
            return
        if self.memory_limit is not None and _rss_bytes(self.proc.pid) > self.memory_limit:
            # No cgroup here: the kubelet plays the OOM killer on the process's RSS.
            log.warning("%s: %s over its memory limit: killed", self.worker.key, self.name)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self._exited(128 + signal.SIGKILL, now, "OOMKilled")
            return
        self._probe(now)

    def start(self, now: float) -> None:
        pod = self.worker.pod_snapshot()
        try:
            self.env = self.worker.container_env(self.spec, pod)
            argv = container_argv(self.spec, self.env)
        except (UnsupportedSpec, ApiError, httpx.HTTPError) as exc:
            self._cannot_start("CreateContainerConfigError", str(exc), now)
            return
        pull_policy = str(self.spec.get("imagePullPolicy") or "IfNotPresent")
        pull_error = image_pull_error(self.image, pull_policy, self.env.get("PATH", ""))
        if pull_error is not None:
            reason, message = pull_error
            if reason == "ErrImagePull" and self.pull_failures > 0:
                reason, message = (
                    "ImagePullBackOff",
                    f'Back-off pulling image "{self.image}": ErrImagePull: {message}',
                )
            self.pull_failures += 1
            self._cannot_start(reason, message, now)
            return
        self.pull_failures = 0
        for key, value in self.env.items():
            if value == self.termination_path:
                self.env[key] = str(self.termination_file)
        executable = shutil.which(argv[0], path=self.env.get("PATH")) if argv else None
        if executable is None:
            self._cannot_start(
                "RunContainerError", f"executable {argv[:1]} not found on PATH (image ignored)", now
            )
            return
        workdir = Path(str(self.spec.get("workingDir") or self.worker.pod_dir))
        if not workdir.is_dir():
            workdir = self.worker.pod_dir
        with self.log_path.open("ab") as header:  # marks restarts; argv goes to the kubelet log
            header.write(
                f"--- voicefleet kubelet {timestamp(datetime.now(UTC))}: "
                f"{self.name} run {self.runs + 1}\n".encode()
            )
        self.termination_file.write_bytes(b"")
        self.log_offset = self.log_path.stat().st_size
        log_file: IO[bytes] = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                [executable, *argv[1:]],
                env=self.env,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            self._cannot_start("RunContainerError", str(exc), now)
            return
        finally:
            log_file.close()
        if self.runs > 0:
            self.restart_count += 1
        self.runs += 1
        self.start_failures = 0
        self.state = "running"
        self.started_at = datetime.now(UTC)
        self.started_mono = now
        self.termination = None
        self.ready = False
        ip = self.worker.pod_ip
        self.readiness = self._tracker("readinessProbe", "readiness", ip, now)
        self.liveness = self._tracker("livenessProbe", "liveness", ip, now)
        self.startup = self._tracker("startupProbe", "startup", ip, now)
        log.info("%s: started %s pid=%s: %s", self.worker.key, self.name, self.proc.pid, argv)

    def _tracker(self, field_name: str, kind: Any, ip: str, now: float) -> ProbeTracker | None:
        try:
            probe = parse_probe(self.spec.get(field_name), self.spec, ip)
        except (UnsupportedSpec, ValueError) as exc:
            log.warning("%s: ignoring %s: %s", self.worker.key, field_name, exc)
            return None
        return ProbeTracker(probe, kind, started_at=now) if probe else None

    def _cannot_start(self, reason: str, message: str, now: float) -> None:
        log.warning("%s: %s: %s: %s", self.worker.key, self.name, reason, message)
        self.state = "waiting"
        self.waiting_reason = reason
        self.waiting_message = message
        self.next_start = now + restart_backoff(
            self.start_failures, self.worker.kubelet.config.restart_backoff_cap
        )
        self.start_failures += 1

    def _exited(self, code: int, now: float, reason: str, message: str = "") -> None:
        if code < 0:  # killed by a signal: report it the way container runtimes do
            code = 128 - code
        pid = self.proc.pid if self.proc else None
        self.proc = None
        self.ready = False
        self.termination = Termination(
            exit_code=code,
            reason=reason,
            started_at=self.started_at,
            finished_at=datetime.now(UTC),
            message=self._termination_message(code) or message,
        )
        self.state = "terminated"
        log.info("%s: %s pid=%s exited %s (%s)", self.worker.key, self.name, pid, code, reason)
        if self.worker.deleting or not should_restart(self.worker.restart_policy, code):
            self.done = True
            return
        cap = self.worker.kubelet.config.restart_backoff_cap
        ran_for = now - self.started_mono
        # As the real kubelet: the first restart is immediate (there is no back-off entry
        # yet), back-off and the CrashLoopBackOff reason only from the second exit on.
        first = self.restart_count == 0
        delay = 0.0 if ran_for > 60 or first else restart_backoff(self.restart_count - 1, cap)
        self.last_termination = self.termination
        self.state = "waiting"
        if delay > 0:
            self.waiting_reason = "CrashLoopBackOff"
            self.waiting_message = f"back-off {delay:.0f}s restarting failed container"
        else:
            self.waiting_reason = "ContainerCreating"
            self.waiting_message = ""
        self.next_start = now + delay

    def _termination_message(self, code: int) -> str:
        """The container's termination message, or its log tail (see podspec)."""
        try:
            written = self.termination_file.read_bytes()
        except OSError:
            written = b""
        tail = b""
        if not written.strip() and self.termination_policy == "FallbackToLogsOnError" and code:
            try:
                with self.log_path.open("rb") as log_file:
                    log_file.seek(self.log_offset)
                    tail = log_file.read()
            except OSError:
                tail = b""
        return termination_message(written, tail, self.termination_policy, code)

    def _probe(self, now: float) -> None:
        if self.startup is not None and not self.startup.verdict:
            if self.startup.due(now):
                self.startup.record(run_probe(self.startup.probe, self.env), now)
                if self.startup.failed:
                    self.kill_now(now, "Startup probe failed")
            return
        if self.liveness is not None and self.liveness.due(now):
            self.liveness.record(run_probe(self.liveness.probe, self.env), now)
            if self.liveness.failed:
                self.kill_now(now, "Liveness probe failed")
                return
        if self.readiness is not None:
            if self.readiness.due(now):
                self.readiness.record(run_probe(self.readiness.probe, self.env), now)
            self.ready = self.readiness.verdict
        else:
            self.ready = True

    def kill_now(self, now: float, message: str) -> None:
        """Stop the process (grace from the pod spec) after a failed liveness/startup probe."""
        if self.proc is None:
            return
        grace = float(self.worker.pod_snapshot()["spec"].get("terminationGracePeriodSeconds", 30))
        self.signal_stop(grace)
        code = self.proc.wait() if self.proc is not None else -9
        self._exited(code, now, "Error", message)

    def signal_stop(self, grace: float) -> None:
        if self.proc is not None:
            terminate_groups([self.proc.pid], grace)

    def view(self) -> ContainerView:
        return ContainerView(
            name=self.name,
            image=self.image,
            state="running" if self.state == "running" else self.state,  # type: ignore[arg-type]
            ready=self.ready,
            started=self.state == "running" and (self.startup is None or self.startup.verdict),
            restart_count=self.restart_count,
            pid=self.proc.pid if self.proc else None,
            started_at=self.started_at,
            waiting_reason=self.waiting_reason,
            waiting_message=self.waiting_message,
            termination=self.termination,
            last_termination=self.last_termination,
        )


class PodWorker(threading.Thread):
    """Owns one pod from first sight until its deletion completes (or the kubelet stops)."""

    def __init__(self, kubelet: Kubelet, pod: JsonDict) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.kubelet = kubelet
        self.uid = str(meta["uid"])
        self.key = f"{meta['namespace']}/{meta['name']}"
        self._pod: JsonDict | None = pod
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._shutdown = threading.Event()
        self.pod_dir = (
            kubelet.config.root_dir / "pods" / f"{meta['namespace']}_{meta['name']}_{self.uid[:8]}"
        )
        self.pod_ip = ""
        self.deleting = False
        self.containers: list[ContainerRuntime] = []
        self.restart_policy = str(pod["spec"].get("restartPolicy", "Always"))
        self._last_status: JsonDict | None = None
        self._start_time = datetime.now(UTC)

    # -- inputs from the watch -------------------------------------------------------

    def update(self, pod: JsonDict | None) -> None:
        with self._lock:
            self._pod = pod
        self._wake.set()

    def pod_snapshot(self) -> JsonDict:
        with self._lock:
            if self._pod is None:
                raise LookupError("pod is gone")
            return self._pod

    def current(self) -> JsonDict | None:
        with self._lock:
            return self._pod

    def shutdown(self) -> None:
        """Kubelet is stopping: end the processes, leave the API objects alone."""
        self._shutdown.set()
        self._wake.set()

    # -- environment -------------------------------------------------------------------

    def container_env(self, spec: JsonDict, pod: JsonDict) -> dict[str, str]:
        config = self.kubelet.config
        base = {
            "PATH": f"{config.path_prefix}:{SYSTEM_PATH}",
            "HOME": os.environ.get("HOME", str(self.pod_dir)),
            "HOSTNAME": str(pod["metadata"]["name"]),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "VIRTUAL_ENV": str(config.path_prefix.parent),
            "KUBERNETES_SERVICE_HOST": self.kubelet.api_host,
            "KUBERNETES_SERVICE_PORT": str(self.kubelet.api_port),
            "VOICEFLEET_POD_LOG_DIR": str(self.pod_dir),
        }
        sa_kubeconfig = self._service_account_kubeconfig(pod)
        if sa_kubeconfig is not None:
            base["KUBECONFIG"] = str(sa_kubeconfig)
        env = resolve_env(
            spec,
            pod,
            base_env=base,
            pod_ip=self.pod_ip,
            host_ip=HOST_IP,
            config_map=self.kubelet.config_map_data,
            secret=self.kubelet.secret_data,
        )
        env[MARKER_ENV] = config.cluster_id
        return env

    def _service_account_kubeconfig(self, pod: JsonDict) -> Path | None:
        """A kubeconfig holding a token bound to this pod, the stand-in for the token mount.

        Clients cannot find `/var/run/secrets/kubernetes.io/serviceaccount` outside a
        container, but every Kubernetes client falls back to `$KUBECONFIG`, so the pod
        still talks to the API server as its ServiceAccount, under its RBAC.
        """
        spec = pod["spec"]
        if spec.get("automountServiceAccountToken") is False:
            return None
        account = spec.get("serviceAccountName") or "default"
        directory = self.pod_dir / "serviceaccount"
        path = directory / "kubeconfig"
        if path.exists():
            return path
        meta = pod["metadata"]
        namespace = str(meta["namespace"])
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": SA_TOKEN_SECONDS,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        answer = self.kubelet.client.create(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token", request
        )
        token = str(answer["status"]["token"])
        directory.mkdir(mode=0o700, exist_ok=True)
        (directory / "token").write_text(token)
        (directory / "namespace").write_text(namespace)
        (directory / "ca.crt").write_bytes(self.kubelet.kube.ca_pem)
        user = f"system:serviceaccount:{namespace}:{account}"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": self.kubelet.kube.server,
                        "certificate-authority": str(directory / "ca.crt"),
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "in-cluster",
                    "context": {"cluster": "local", "user": user, "namespace": namespace},
                }
            ],
            "current-context": "in-cluster",
        }
        tmp = directory / "kubeconfig.tmp"
        tmp.write_text(json.dumps(config))
        tmp.replace(path)
        return path

    # -- main loop ------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("%s: worker crashed; stopping its processes", self.key)
            self._stop_processes(2.0)
        finally:
            self.kubelet.allocator_release(self.uid)
            self.kubelet.worker_finished(self)

    def _run(self) -> None:
        pod = self.pod_snapshot()
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        status = pod.get("status", {})
        previous_ip = str(status.get("podIP", ""))
        if pod["spec"].get("hostNetwork"):
            self.pod_ip = HOST_IP
        else:
            self.pod_ip = self.kubelet.allocate_ip(self.uid, previous_ip)
        self.containers = [ContainerRuntime(self, c) for c in pod["spec"].get("containers", [])]
        finished = status.get("phase") in ("Succeeded", "Failed")
        if finished:  # seen again after a kubelet restart: never rerun a completed pod
            for container in self.containers:
                container.done = True
        else:
            self._annotate(pod)
        while True:
            if self._shutdown.is_set():
                self._stop_processes(5.0)
                return
            current = self.current()
            if current is None:  # force-deleted: nothing to report to
                self._stop_processes(2.0)
                return
            if current["metadata"].get("deletionTimestamp"):
                self._terminate(current)
                return
            now = time.monotonic()
            if not finished:
                for container in self.containers:
                    container.tick(now)
                self._sync_status(current)
            self._wake.wait(self.kubelet.config.sync_interval)
            self._wake.clear()

    def _annotate(self, pod: JsonDict) -> None:
        """Record where logs go; through pods/status, the only write NodeRestriction allows."""
        first = self.containers[0].log_path if self.containers else self.pod_dir
        annotations = {
            LOG_PATH_ANNOTATION: str(first),
            LOG_DIR_ANNOTATION: str(self.pod_dir),
            POD_IP_ANNOTATION: self.pod_ip,
        }
        existing = pod["metadata"].get("annotations") or {}
        if all(existing.get(k) == v for k, v in annotations.items()):
            return
        with contextlib.suppress(ApiError):
            self.kubelet.patch_pod_status(pod, {"metadata": {"annotations": annotations}})

    def _sync_status(self, pod: JsonDict) -> None:
        previous = pod.get("status", {}).get("conditions", []) or []
        status = build_pod_status(
            containers=[c.view() for c in self.containers],
            restart_policy=self.restart_policy,
            pod_ip=self.pod_ip,
            host_ip=HOST_IP,
            start_time=self._start_time,
            previous_conditions=previous,
            now=datetime.now(UTC),
        )
        if status == self._last_status:
            return
        try:
            self.kubelet.patch_pod_status(pod, {"status": status})
            self._last_status = status
        except ApiError as exc:
            if exc.status != 404:
                log.warning("%s: status update failed: %s", self.key, exc)
        except httpx.HTTPError as exc:
            log.warning("%s: status update failed: %s", self.key, exc)

    # -- termination ------------------------------------------------------------------------

    def _terminate(self, pod: JsonDict) -> None:
        self.deleting = True
        meta = pod["metadata"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        deadline = time.monotonic() + float(grace)
        log.info("%s: deleting (grace %ss)", self.key, grace)
        for container in self.containers:
            container.done = True  # nothing restarts from here on
        hooks = [
            threading.Thread(target=self._pre_stop, args=(c, deadline), daemon=True)
            for c in self.containers
            if c.proc is not None and (c.spec.get("lifecycle") or {}).get("preStop")
        ]
        for hook in hooks:
            hook.start()
        for hook in hooks:
            hook.join(max(0.0, deadline - time.monotonic()))
        self._stop_processes(max(0.0, deadline - time.monotonic()))
        now = time.monotonic()
        for container in self.containers:
            container.tick(now)
        self._sync_status(pod)
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        try:
            self.kubelet.client.delete(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", body
            )
        except ApiError as exc:
            if exc.status not in (404, 409):
                log.warning("%s: final delete failed: %s", self.key, exc)
        log.info("%s: deleted", self.key)

    def _pre_stop(self, container: ContainerRuntime, deadline: float) -> None:
        hook = container.spec["lifecycle"]["preStop"]
        timeout = max(0.1, deadline - time.monotonic())
        try:
            if "httpGet" in hook:
                action = hook["httpGet"]
                port = resolve_port(action["port"], container.spec)
                host = action.get("host") or self.pod_ip
                scheme = str(action.get("scheme", "HTTP")).lower()
                url = f"{scheme}://{host}:{port}{action.get('path', '/')}"
                httpx.get(url, timeout=timeout, verify=False)
            elif "exec" in hook:
                subprocess.run(
                    [str(c) for c in hook["exec"]["command"]],
                    env=container.env,
                    capture_output=True,
                    timeout=timeout,
                    check=False,
                )
            elif "sleep" in hook:
                time.sleep(min(timeout, float(hook["sleep"].get("seconds", 0))))
        except (httpx.HTTPError, OSError, subprocess.TimeoutExpired, UnsupportedSpec) as exc:
            log.warning("%s: preStop of %s failed: %s", self.key, container.name, exc)

    def _stop_processes(self, grace: float) -> None:
        running = [c for c in self.containers if c.proc is not None]
        for container in running:
            container.done = True
        terminate_groups([c.proc.pid for c in running if c.proc is not None], grace)
        for container in running:
            if container.proc is not None and not group_alive(container.proc.pid):
                code = container.proc.wait()
                container._exited(code, time.monotonic(), "Completed" if code == 0 else "Error")


class Kubelet:
    """Node registration, heartbeats, the pod watch, and the pod workers."""

    def __init__(self, config: KubeletConfig) -> None:
        self.config = config
        self.kube = kubeconfig.load(config.kubeconfig)
        self.client = KubeClient(self.kube)
        address = self.kube.server.removeprefix("https://")
        host, _, port = address.rpartition(":")
        self.api_host, self.api_port = host, int(port)
        self._workers: dict[str, PodWorker] = {}
        # Pods whose deletion this kubelet completed; late watch events for them are ignored.
        self._finished: set[str] = set()
        self._workers_lock = threading.Lock()
        self._network: PodNetworkClaim | None = None
        self._allocator: IpAllocator | None = None
        self._alloc_lock = threading.Lock()
        self._log_server: LogServer | None = None
        self._log_port = 0
        self.stop = threading.Event()

    # -- helpers used by workers ---------------------------------------------------------

    def allocate_ip(self, owner: str, previous: str) -> str:
        with self._alloc_lock:
            assert self._allocator is not None
            if previous and self._allocator.reserve(previous, owner):
                return previous
            return self._allocator.allocate(owner)

    def allocator_release(self, owner: str) -> None:
        with self._alloc_lock:
            if self._allocator is not None:
                self._allocator.release(owner)

    def worker_finished(self, worker: PodWorker) -> None:
        with self._workers_lock:
            if self._workers.get(worker.uid) is worker:
                del self._workers[worker.uid]
            if worker.deleting or worker.current() is None:
                self._finished.add(worker.uid)

    def container_log(
        self, namespace: str, pod: str, container: str
    ) -> tuple[Path, Callable[[], bool]] | None:
        """Where a container's output is, and whether it is still running (for `logs -f`)."""
        with self._workers_lock:
            workers = [w for w in self._workers.values() if w.key == f"{namespace}/{pod}"]
        for worker in workers:
            for runtime in worker.containers:
                if runtime.name == container:
                    return runtime.log_path, lambda r=runtime: r.proc is not None
        return None

    def patch_pod_status(self, pod: JsonDict, body: JsonDict) -> None:
        meta = pod["metadata"]
        self.client.merge_patch(
            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status", body
        )

    def config_map_data(self, namespace: str, name: str) -> Mapping[str, str] | None:
        try:
            obj = self.client.get(f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return {str(k): str(v) for k, v in (obj.get("data") or {}).items()}

    def secret_data(self, namespace: str, name: str) -> Mapping[str, str] | None:
        try:
            obj = self.client.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return {
            str(k): base64.b64decode(str(v)).decode(errors="replace")
            for k, v in (obj.get("data") or {}).items()
        }

    # -- node ----------------------------------------------------------------------------

    def _node_status(self) -> JsonDict:
        now = timestamp(datetime.now(UTC))
        capacity = {
            "cpu": self.config.cpu,
            "memory": self.config.memory,
            "pods": str(self.config.max_pods),
            "ephemeral-storage": "100Gi",
            GPU_RESOURCE: str(self.config.gpus),
        }

        def condition(kind: str, status: str, reason: str, message: str) -> JsonDict:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self._started_at,
            }

        return {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
                condition("Ready", "True", "KubeletReady", "process kubelet is posting ready"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": HOST_IP},
                {"type": "Hostname", "address": self.config.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self._log_port}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": platform.release(),
                "osImage": "voicefleet process kubelet",
                "containerRuntimeVersion": "process://local",
                "kubeletVersion": self.config.kubernetes_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64" if platform.machine() == "x86_64" else platform.machine(),
            },
        }

    def register_node(self) -> None:
        self._started_at = timestamp(datetime.now(UTC))
        name = self.config.node_name
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "voicefleet.io/process-kubelet": "true",
                    **self.config.labels,
                },
            },
            "spec": {},
            "status": self._node_status(),
        }
        try:
            self.client.create("/api/v1/nodes", node)
            log.info("registered node %s", name)
        except ApiError as exc:
            if exc.status != 409:
                raise
            log.info("node %s already registered", name)
        self._heartbeat()

    def _heartbeat(self) -> None:
        name = self.config.node_name
        self.client.merge_patch(f"/api/v1/nodes/{name}/status", {"status": self._node_status()})
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
        renew = micro_time(datetime.now(UTC))
        try:
            self.client.merge_patch(lease_path, {"spec": {"renewTime": renew}})
        except ApiError as exc:
            if exc.status != 404:
                raise
            node = self.client.get(f"/api/v1/nodes/{name}")
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": name,
                    "namespace": "kube-node-lease",
                    "ownerReferences": [
                        {
                            "apiVersion": "v1",
                            "kind": "Node",
                            "name": name,
                            "uid": node["metadata"]["uid"],
                        }
                    ],
                },
                "spec": {
                    "holderIdentity": name,
                    "leaseDurationSeconds": LEASE_SECONDS,
                    "renewTime": renew,
                },
            }
            self.client.create(
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", lease
            )

    def _heartbeat_loop(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            try:
                self._heartbeat()
            except (ApiError, httpx.HTTPError) as exc:
                log.warning("heartbeat failed: %s", exc)

    # -- pods -------------------------------------------------------------------------------

    def _observe(self, pod: JsonDict) -> None:
        uid = str(pod["metadata"]["uid"])
        with self._workers_lock:
            if uid in self._finished:
                return
            worker = self._workers.get(uid)
            if worker is None:
                worker = PodWorker(self, pod)
                self._workers[uid] = worker
                worker.start()
                return
        worker.update(pod)

    def _forget(self, uid: str) -> None:
        with self._workers_lock:
            worker = self._workers.get(uid)
            self._finished.discard(uid)  # the API object is gone: no more events will come
        if worker is not None:
            worker.update(None)

    def _watch_loop(self) -> None:
        path = "/api/v1/pods"
        selector = {"fieldSelector": f"spec.nodeName={self.config.node_name}"}
        while not self.stop.is_set():
            try:
                listing = self.client.get(path, **selector)
                seen = set()
                for pod in listing.get("items", []):
                    seen.add(str(pod["metadata"]["uid"]))
                    self._observe(pod)
                with self._workers_lock:
                    gone = [uid for uid in self._workers if uid not in seen]
                for uid in gone:
                    self._forget(uid)
                version = str(listing["metadata"]["resourceVersion"])
                while not self.stop.is_set():
                    params = {**selector, "resourceVersion": version, "allowWatchBookmarks": "true"}
                    for event in self.client.watch(path, params, self.stop):
                        kind = event.get("type")
                        obj = event.get("object", {})
                        if kind == "ERROR":
                            raise ApiError(int(obj.get("code", 500)), "", str(obj.get("message")))
                        version = str(obj["metadata"]["resourceVersion"])
                        if kind in ("ADDED", "MODIFIED"):
                            self._observe(obj)
                        elif kind == "DELETED":
                            self._forget(str(obj["metadata"]["uid"]))
            except (ApiError, httpx.HTTPError, KeyError, ValueError) as exc:
                if not self.stop.is_set():
                    log.info("pod watch restarting: %s", exc)
                    self.stop.wait(1.0)

    # -- run ----------------------------------------------------------------------------------

    def run(self) -> None:
        self._network = PodNetworkClaim.acquire()
        self._allocator = IpAllocator(self._network.third_octet)
        log.info("pod network 127.0.%d.0/24", self._network.third_octet)
        self.config.root_dir.mkdir(parents=True, exist_ok=True)
        if self.config.serving_cert is not None and self.config.serving_key is not None:
            self._log_server = LogServer(
                port=self.config.port,
                cert=self.config.serving_cert,
                key=self.config.serving_key,
                client_ca_pem=self.kube.ca_pem,
                lookup=self.container_log,
            )
            self._log_server.start()
            self._log_port = self._log_server.port
        while True:
            try:
                self.register_node()
                break
            except (ApiError, httpx.HTTPError) as exc:
                log.info("waiting for the API server to register the node: %s", exc)
                if self.stop.wait(1.0):
                    return
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
        threading.Thread(target=self._watch_loop, name="pod-watch", daemon=True).start()
        while not self.stop.wait(1.0):
            pass
        self.shutdown()

    def shutdown(self) -> None:
        with self._workers_lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.shutdown()
        for worker in workers:
            worker.join(timeout=15.0)
        if self._log_server is not None:
            self._log_server.stop()
        if self._network is not None:
            self._network.release()
        self.client.close()
        log.info("kubelet stopped")


def run_kubelet(config: KubeletConfig) -> int:
    """Entry point of `voicefleet-cluster kubelet`: run until SIGTERM/SIGINT."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(threadName)s %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    kubelet = Kubelet(config)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        kubelet.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    kubelet.run()
    return 0
