#!/usr/bin/env bash
# Installs the host packages the tests and the demo need (Debian 12), once.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

packages=(gcc e2fsprogs strace procps qemu-utils python3-venv)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# QEMU's QMP client library for the tests, in a virtual environment in the cache.
venv="${STRATOVIRT_CACHE:-$HOME/.cache/stratovirt}/venv"
if ! "$venv/bin/python3" -c 'import qemu.qmp' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/python3" -m pip install -q 'qemu.qmp==0.0.6'
fi
echo "host packages ready"
