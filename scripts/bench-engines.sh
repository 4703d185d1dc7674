#!/bin/sh
# Host-side block engine benchmark (aio=off|threads|native|io_uring), see docs/aio.md.
# Usage: scripts/bench-engines.sh [aio_bench options]   (default JSON: target/aio-bench.json)
set -eu
cd "$(dirname "$0")/.."
out="${CARGO_TARGET_DIR:-target}/aio-bench.json"
cargo build --release -q -p util --example aio_bench
case " $* " in
    *" --json "*) set -- "$@" ;;
    *) set -- "$@" --json "$out" ;;
esac
echo "kernel $(uname -r), $(nproc) CPUs, load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exec "${CARGO_TARGET_DIR:-target}/release/examples/aio_bench" "$@"
