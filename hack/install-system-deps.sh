#!/usr/bin/env bash
# Installs the Debian packages VoiceFleet needs, only when they are missing.
#   espeak-ng: phonemizer for Piper voices (GPL, used only as a separate program/library).
#   chromium: the headless browser the playground test drives through Playwright
#             (tests/e2e; Playwright's own browser download is never used).
set -euo pipefail
need=()
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo ">> installing Debian packages: ${need[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
