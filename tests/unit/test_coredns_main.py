"""Our CoreDNS main (hack/k8s/coredns/main.go) against the Corefile the node writes.

`go test` in hack/k8s/coredns checks the directive order against the pinned CoreDNS and
that each directive has its plugin; these need no Go toolchain.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from voicefleet_localcluster import binaries, node


def coredns_directives() -> list[str]:
    """The directive list of our CoreDNS main (hack/k8s/coredns/main.go)."""
    source = (binaries.COREDNS_MODULE_DIR / "main.go").read_text()
    block = source.split("var directives = []string{", 1)[1].split("}", 1)[0]
    return re.findall(r'"([a-z0-9_]+)"', block)


def test_coredns_links_every_plugin_the_nodes_corefile_uses() -> None:
    used = {
        line.split()[0]
        for line in node.corefile().splitlines()[1:]
        if line.startswith("    ") and not line.startswith("     ") and line.strip() != "}"
    }
    assert used == {"errors", "health", "ready", "kubernetes", "cache"}
    assert used <= set(coredns_directives())


def test_coredns_is_built_from_our_main_with_its_plugins_imported() -> None:
    coredns = next(t for t in binaries.TARGETS if t.name == "coredns")
    assert coredns.package == binaries.COREDNS_PACKAGE
    module = (binaries.COREDNS_MODULE_DIR / "go.mod").read_text()
    assert f"module {binaries.COREDNS_PACKAGE}\n" in module
    source = (binaries.COREDNS_MODULE_DIR / "main.go").read_text()
    imported = set(re.findall(r'"github.com/coredns/coredns/plugin/([a-z0-9_]+)"', source))
    # the metrics plugin registers the `prometheus` directive
    named = {"metrics" if d == "prometheus" else d for d in coredns_directives()}
    assert imported == named


def test_our_mains_are_part_of_their_cache_keys(tmp_path: Path) -> None:
    """An edited main (another plugin list) must not find the old binary cached."""
    keys = {
        binaries.COREDNS_MODULE_DIR: lambda d: binaries.read_versions(coredns_dir=d).cache_key,
        binaries.KUBE_ROUTER_MODULE_DIR: lambda d: binaries.kube_router_versions(d)[1],
    }
    for module_dir, key in keys.items():
        copy = tmp_path / module_dir.name
        shutil.copytree(module_dir, copy)
        before = key(copy)
        main = copy / "main.go"
        main.write_text(main.read_text() + "\n// edited\n")
        after = key(copy)
        assert after != before, module_dir
        (copy / "main_test.go").write_text("package main\n")  # tests are not in the build
        assert key(copy) == after, module_dir
