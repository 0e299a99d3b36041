#!/usr/bin/env bash
# Installs the Debian packages `make images` needs, only when they are missing:
#   debootstrap: makes the Debian bookworm base root filesystem (no registry is reachable,
#                so the base image is built here rather than pulled).
#   buildah:     builds docker/*.Dockerfile without a daemon (docker/podman are used instead
#                when their daemon answers; see hack/images/build.py).
#   umoci:       unpacks an OCI image into a bundle so the image check can run it with runc.
# Kept apart from hack/install-system-deps.sh (the runtime packages `make install` needs):
# a developer who never builds images never installs a container builder.
set -euo pipefail
need=()
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v buildah >/dev/null 2>&1 || need+=(buildah)
command -v umoci >/dev/null 2>&1 || need+=(umoci)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "[make images] installing Debian packages: ${need[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "[make images] error: ${need[*]} missing and not root (no sudo): install them with" >&2
    echo "  apt-get install --no-install-recommends ${need[*]}" >&2
    exit 1
  fi
  sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
# Others may be running apt at the same time (make install): wait for dpkg's lock
# instead of failing on it.
apt_opts=(-o DPkg::Lock::Timeout=600 -qq)
if ! "${sudo_cmd[@]}" apt-get "${apt_opts[@]}" update \
  || ! "${sudo_cmd[@]}" apt-get "${apt_opts[@]}" install -y --no-install-recommends "${need[@]}"; then
  echo "[make images] error: could not install ${need[*]} with apt-get (see above);" >&2
  echo "  install them by hand: apt-get install --no-install-recommends ${need[*]}" >&2
  exit 1
fi
