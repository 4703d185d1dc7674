#!/usr/bin/env bash
# The main job on a fresh machine: build the VMM and the guest (cached), boot a Linux guest
# whose disks run on io_uring, show what the guest sees and does with them (capacity, an
# ext4 root mounted read-write, a fio write-and-verify job), then print the engine table.
#
#   scripts/demo.sh            # everything
#   scripts/demo.sh --no-bench # skip the engine table
set -euo pipefail
cd "$(dirname "$0")/.."

bench=1
[ "${1:-}" = "--no-bench" ] && bench=0

step() { printf '\n=== %s (%s)\n' "$*" "$(date +%T)"; }
start=$(date +%s)

step "host packages"
scripts/setup-host.sh

step "build (release)"
cargo build --release --bins

step "guest kernel, initramfs and root image"
scripts/guest/build.sh
guest=$(scripts/guest/build.sh --print-dir)

work="${STRATOVIRT_CACHE:-$HOME/.cache/stratovirt}/demo"
mkdir -p "$work"
cp --sparse=always "$guest/rootfs.ext4" "$work/root.img"
rm -f "$work/data.img"
truncate -s 64M "$work/data.img"

step "boot: root and data disks on io_uring (a few minutes here; about a second on hardware virtualization)"
cmd=(target/release/stratovirt -machine microvm -m 512 -smp 2
    -kernel "$guest/vmlinux"
    -append "console=ttyS0 quiet reboot=k panic=-1 root=/dev/vda rw sv.run=blk,fio sv.engine=io_uring sv.dev=/dev/vdb"
    -drive id=root,file="$work/root.img",aio=io_uring,direct=on
    -device virtio-blk-device,drive=root,id=blk0
    -drive id=data,file="$work/data.img",aio=io_uring,direct=on,serial=DEMO-DATA
    -device virtio-blk-device,drive=data,id=blk1
    -serial stdio)
echo "${cmd[*]}"
boot_start=$(date +%s)
# The console is long; show the guest's own report lines.
"${cmd[@]}" < /dev/null | tee "$work/console.log" | grep --line-buffered -E '^(SV-|STRATOVIRT-)' || true
status=${PIPESTATUS[0]}
echo "VMM exit status: $status, guest run took $(( $(date +%s) - boot_start )) s"
grep -q '^SV-FIO-PASS engine=io_uring' "$work/console.log" || {
    echo "the guest's fio job did not pass; console in $work/console.log" >&2
    exit 1
}
echo "root disk after the VM: $(dumpe2fs -h "$work/root.img" 2>/dev/null | grep -E '^Mount count')"

if [ "$bench" = 1 ]; then
    step "engine table (device level, no guest: see docs/benchmark.md)"
    scripts/bench.sh --quick
fi

step "done in $(( $(date +%s) - start )) s"
