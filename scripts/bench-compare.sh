#!/bin/sh
# Compares the device-level benchmark of this tree with an earlier commit, in one run:
# builds `stratovirt-bench` at REV (in a worktree under the cache), then runs the two binaries
# alternately ROUNDS times with the same `stratovirt-bench blk` options, and prints, for every
# cell, the median IOPS, p50 latency and device CPU per I/O of each side and their ratio.
#
# Usage: scripts/bench-compare.sh REV [--rounds N] [--this "OPTIONS"] [stratovirt-bench blk options]
#   --this: options for this tree's binary only (e.g. "--mem-prealloc", new since REV)
#   e.g. scripts/bench-compare.sh 9fb626f --rounds 3 --this --mem-prealloc \
#            --engines native,io_uring --backings shm,disk --patterns randread,randwrite \
#            --depths 1,32 --no-fio
set -eu
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
rev=$1
shift
rounds=3
this=""
while :; do
    case "${1:-}" in
        --rounds) rounds=$2; shift 2 ;;
        --this) this=$2; shift 2 ;;
        *) break ;;
    esac
done
cache="${STRATOVIRT_CACHE:-$HOME/.cache/stratovirt}/bench-compare"
sha=$(git rev-parse --short "$rev")
old_tree="$cache/tree-$sha"
mkdir -p "$cache"
if [ ! -d "$old_tree" ]; then
    git worktree add --detach "$old_tree" "$sha" >/dev/null
fi
echo "bench-compare: building $sha and this tree" >&2
(cd "$old_tree" && CARGO_TARGET_DIR="$cache/target" cargo build --release -q --bin stratovirt-bench)
cargo build --release -q --bin stratovirt-bench
old="$cache/target/release/stratovirt-bench"
new="${CARGO_TARGET_DIR:-target}/release/stratovirt-bench"
out=$(mktemp -d)
i=1
while [ "$i" -le "$rounds" ]; do
    echo "bench-compare: round $i of $rounds: $sha" >&2
    "$old" blk "$@" --json "$out/old-$i.json" >/dev/null
    echo "bench-compare: round $i of $rounds: this tree" >&2
    # shellcheck disable=SC2086 # $this is a list of options
    "$new" blk "$@" $this --json "$out/new-$i.json" >/dev/null
    i=$((i + 1))
done
python3 - "$out" "$sha" <<'PY'
import glob, json, statistics, sys

out, sha = sys.argv[1], sys.argv[2]

def cells(side):
    runs = {}
    for path in sorted(glob.glob(f"{out}/{side}-*.json")):
        for c in json.load(open(path))["cells"]:
            key = (c["backing"], c["pattern"], c["qd"], c["source"], c["engine"])
            runs.setdefault(key, []).append(c)
    return runs

def median(runs, field):
    return statistics.median(r[field] for r in runs)

old, new = cells("old"), cells("new")
print(f"| backing | pattern | QD | engine | {sha} IOPS | this IOPS | ratio | {sha} p50 µs | this p50 µs "
      f"| {sha} CPU µs/IO | this CPU µs/IO |")
print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
for key in sorted(set(old) | set(new), key=lambda k: (k[0], k[1], k[2], k[3], k[4])):
    b, p, qd, source, engine = key
    name = engine if source == "vmm" else f"fio {engine}"
    o, n = old.get(key), new.get(key)
    def show(runs, field, fmt):
        return fmt.format(median(runs, field)) if runs else "-"
    ratio = "-"
    if o and n and median(o, "iops") > 0:
        ratio = f"{median(n, 'iops') / median(o, 'iops'):.2f}"
    print(f"| {b} | {p} | {qd} | {name} | {show(o, 'iops', '{:.0f}')} | {show(n, 'iops', '{:.0f}')} "
          f"| {ratio} | {show(o, 'p50_us', '{:.1f}')} | {show(n, 'p50_us', '{:.1f}')} "
          f"| {show(o, 'cpu_us_per_io', '{:.2f}')} | {show(n, 'cpu_us_per_io', '{:.2f}')} |")
PY
echo "bench-compare: JSON of every round in $out" >&2
