"""The node's CoreDNS is our own main (hack/k8s/coredns): the cluster-DNS plugins and no
cloud ones, still stamped with its release. That names resolve through it in pods is
test_realnode.py's (in-cluster HTTP by a Service's DNS name from a `kubectl run` client).
"""

from __future__ import annotations

import subprocess

import pytest

from voicefleet_localcluster import binaries, nodeimages
from voicefleet_localcluster.testing import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


def test_the_nodes_coredns_links_the_cluster_dns_plugins_only(local_cluster: LocalCluster) -> None:
    coredns = local_cluster.bin_dir / "coredns"
    listed = subprocess.run([coredns, "-plugins"], capture_output=True, text=True, check=True)
    linked = set(listed.stdout.split())
    assert {"errors", "health", "ready", "kubernetes", "cache", "forward", "prometheus"} <= linked
    assert not linked & {"route53", "azure", "clouddns", "nomad", "trace", "grpc", "sign"}
    version = subprocess.run([coredns, "-version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith(f"CoreDNS-{binaries.read_versions().coredns.lstrip('v')}\n")
    # the pod runs this very binary: its image is tagged with the binary's digest
    deployment = local_cluster.get_json("deployment", "coredns", "-n", "kube-system")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == nodeimages.coredns_image(binaries.read_versions().coredns, coredns)
    assert deployment["status"].get("availableReplicas") == 1
