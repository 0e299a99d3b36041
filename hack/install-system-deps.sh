#!/usr/bin/env bash
# Installs the Debian packages VoiceFleet needs, only when they are missing.
#   espeak-ng: phonemizer for Piper voices (GPL, used only as a separate program/library).
#   chromium: the headless browser the playground test drives through Playwright
#             (tests/e2e; Playwright's own browser download is never used).
#   containerd, runc, containernetworking-plugins, iptables, conntrack: the local
#             cluster's real node (kubelet -> containerd -> runc, CNI bridge, kube-proxy).
#   umoci, gcc + libc6-dev (static libc): the node's locally built pause image.
#   busybox-static: the tiny image test pods run (no registry is reachable).
#   ipset: kube-router's firewall (NetworkPolicy on the real node) keeps its sets with it.
set -euo pipefail
need=()
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ "$(uname -s)" = Linux ]; then
  command -v containerd >/dev/null 2>&1 || need+=(containerd)
  command -v runc >/dev/null 2>&1 || need+=(runc)
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  command -v iptables >/dev/null 2>&1 || need+=(iptables)
  command -v conntrack >/dev/null 2>&1 || need+=(conntrack)
  command -v umoci >/dev/null 2>&1 || need+=(umoci)
  command -v gcc >/dev/null 2>&1 || need+=(gcc)
  [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || [ -f /usr/lib/aarch64-linux-gnu/libc.a ] || need+=(libc6-dev)
  [ -x /bin/busybox ] || need+=(busybox-static)
  command -v ipset >/dev/null 2>&1 || need+=(ipset)
fi
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo ">> installing Debian packages: ${need[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
# Other installers may hold the dpkg lock for a while; wait for it instead of failing.
apt_opts=(-o DPkg::Lock::Timeout=600)
"${sudo_cmd[@]}" apt-get "${apt_opts[@]}" update -qq
"${sudo_cmd[@]}" apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${need[@]}"
