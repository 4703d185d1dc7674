#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what is missing, builds the guest (cached in
# ${STRATOVIRT_CACHE:-~/.cache/stratovirt}), then the three tiers:
#   1. unit and device-level tests (no KVM),
#   2. and 3. guest tests under KVM (boot, disks, hot-plug, fio in the guest).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s (%s)\n' "$*" "$(date +%T)"; }

step "host packages"
scripts/setup-host.sh

step "guest kernel, initramfs and root image"
scripts/guest/build.sh
STRATOVIRT_GUEST_DIR=$(scripts/guest/build.sh --print-dir)
export STRATOVIRT_GUEST_DIR

step "build"
cargo build --workspace --all-targets

step "tier 1: unit and device-level tests"
cargo test --workspace --all-targets --exclude stratovirt

step "tiers 2 and 3: guest tests under KVM"
cargo test -p stratovirt --all-targets -- --test-threads=1
