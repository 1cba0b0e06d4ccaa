#!/usr/bin/env bash
# Install the host packages the tests, the demo and the benchmarks need, only when missing.
# Checks commands rather than package names, so a Node.js from elsewhere (nodesource, nvm)
# is used as it is instead of fighting Debian's npm package.
set -euo pipefail
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v ffmpeg >/dev/null || need+=(ffmpeg)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
[[ -e /usr/include/sys/capability.h ]] || need+=(libcap-dev)  # picamera2's python-prctl
command -v fusermount3 >/dev/null || need+=(fuse3)  # the test SD card (tests/support/sdcard.py)
command -v chromium >/dev/null || need+=(chromium)  # the browser tests (tests/support/browser.py)
for pkg in "$@"; do  # extra packages a target asks for: install when their dpkg is absent
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "installing apt packages: ${need[*]}"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
