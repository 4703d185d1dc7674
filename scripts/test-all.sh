#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what is missing, builds the guest (cached in
# ${STRATOVIRT_CACHE:-~/.cache/stratovirt}), then the three tiers:
#   0. gates: `cargo fmt --check` and clippy with warnings denied (first, as they are quick),
#   1. unit and device-level tests (no KVM), then a 20-second run of every fuzz target
#      (scripts/fuzz.sh: cargo-fuzz with a nightly toolchain, installed if missing),
#   2. and 3. guest tests under KVM (boot, disks, hot-plug, fio in the guest).
# Any failure, including a formatting or clippy finding, ends the run with a non-zero status.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s (%s)\n' "$*" "$(date +%T)"; }

step "host packages"
scripts/setup-host.sh

step "gates: cargo fmt --check, cargo clippy -D warnings"
if command -v rustup >/dev/null; then rustup component add rustfmt clippy; fi
cargo fmt --all -- --check
rustfmt --edition 2021 --check fuzz/fuzz_targets/*.rs
cargo clippy --workspace --all-targets -- -D warnings

step "guest kernel, initramfs and root image"
scripts/guest/build.sh
STRATOVIRT_GUEST_DIR=$(scripts/guest/build.sh --print-dir)
export STRATOVIRT_GUEST_DIR

step "build"
cargo build --workspace --all-targets

step "tier 1: unit and device-level tests"
cargo test --workspace --all-targets --exclude stratovirt

step "fuzz: every target for 20 s"
scripts/fuzz.sh 20

step "tiers 2 and 3: guest tests under KVM"
cargo test -p stratovirt --all-targets -- --test-threads=1
