#!/bin/sh
# The virtio-blk engine benchmark in one command (see docs/benchmark.md):
# builds stratovirt-bench in release mode, installs fio, qemu-utils and gnuplot if missing, runs
# `stratovirt-bench blk` (the VMM's virtio-blk device with every engine, fio on the same files
# as the host's ceiling and qemu-img bench as QEMU's block layer), and writes
# docs/bench/latest.json, docs/bench/latest.png and the latest-results section of
# docs/benchmark.md.
#
# Usage: scripts/bench.sh [stratovirt-bench blk options]      e.g. scripts/bench.sh --quick
# With --quick only the table is printed (docs/ are left alone).
set -eu
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"

need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bench.sh: installing $2" >&2
        apt-get install -y -q "$2" >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q "$2" >/dev/null; }
    fi
    command -v "$1" >/dev/null 2>&1 || echo "bench.sh: $1 not available ($2)" >&2
}
need fio fio
need qemu-img qemu-utils
need gnuplot gnuplot-nox

cargo build --release -q --bin stratovirt-bench
bench="$target/release/stratovirt-bench"
echo "bench.sh: kernel $(uname -r), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2

case " $* " in
    *" --quick "*) exec "$bench" blk "$@" ;;
esac
mkdir -p docs/bench
exec "$bench" blk --json docs/bench/latest.json --plot docs/bench/latest.png \
    --doc docs/benchmark.md "$@"
