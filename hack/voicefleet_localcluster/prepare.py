"""What the real node needs before it starts, built in one place: the Go binaries (control
plane, kubelet, kube-proxy, CoreDNS, Helm), kube-router's firewall, and the project's
images beside them.

`make up`, `voicefleet-cluster build --node` and the test plugin call `build_node_parts`.
On a fresh machine the image build (debootstrap and pip: mostly download and disk) runs in a
thread beside the Go builds (compilers on every core); when everything is cached it takes
seconds. `make test` calls it through the CLI before its two test streams start, so on a
fresh machine the builds have both cores instead of sharing them with tests.
"""

from __future__ import annotations

from collections.abc import Callable

from voicefleet_localcluster import binaries, imagebuild

Logger = Callable[[str], None]


def build_node_parts(log: Logger, *, go: bool = True) -> list[imagebuild.Built]:
    """Build (or find cached) the images and, with `go`, the Go programs; the images are
    returned for `imagebuild.load_built`. `log` is called from two threads (it is wrapped
    to print one line at a time). Raises the Go build's RuntimeError, or the image build's
    ImageBuildError once the Go builds are done."""
    log = imagebuild.serialized(log)
    with imagebuild.BackgroundBuild("cpu", log) as images:
        if go:
            binaries.ensure_binaries(log=log)
            # The node's NetworkPolicy firewall (built once, minutes; cached after).
            binaries.ensure_kube_router(log=log)
    return images.wait()
