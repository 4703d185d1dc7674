#!/usr/bin/env bash
# Measures how long the test guest takes to reach its /init, and how much memory the VMM uses
# beyond guest RAM; writes the table into docs/boot.md (between the measure-boot markers).
#
#   scripts/measure-boot.sh [KERNEL...]     KERNEL: vmlinux (default) and/or bzImage
#
# Environment: STRATOVIRT_BIN (default: target/release/stratovirt, built if missing),
# STRATOVIRT_GUEST_DIR (default: scripts/guest/build.sh --print-dir), SMP (default 1),
# MEM (MiB, default 512), TIMEOUT (seconds per boot, default 900).
#
# Method (see docs/boot.md):
#   time to init  = start of stratovirt -> "STRATOVIRT-GUEST-INIT" on the console ("quiet":
#                   every console byte is a trapped port write, so printing the kernel log
#                   would be measured too);
#   VMM overhead  = VmRSS (/proc/PID/status) - Rss of the guest RAM mapping (/proc/PID/smaps,
#                   the anonymous mapping of exactly MEM MiB), both sampled at the init marker.
set -euo pipefail
cd "$(dirname "$0")/.."

kernels=("$@")
[ "${#kernels[@]}" -gt 0 ] || kernels=(vmlinux)
smp=${SMP:-1}
mem=${MEM:-512}
timeout=${TIMEOUT:-900}
bin=${STRATOVIRT_BIN:-target/release/stratovirt}
if [ ! -x "$bin" ]; then
	cargo build --release --bin stratovirt
	bin=target/release/stratovirt
fi
guest=${STRATOVIRT_GUEST_DIR:-$(scripts/guest/build.sh --print-dir)}
[ -f "$guest/initramfs.cpio.gz" ] || {
	echo "measure-boot: no test guest in $guest; run scripts/guest/build.sh" >&2
	exit 1
}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

now() { date +%s.%N; }

# rss_of_mapping PID SIZE_KB: Rss (kB) of the mapping whose Size is SIZE_KB.
rss_of_mapping() {
	awk -v size="$2" '
		/^Size:/ { match_size = ($2 == size) }
		/^Rss:/ && match_size { print $2; exit }
	' "/proc/$1/smaps"
}

rows=()
for kernel in "${kernels[@]}"; do
	console=$work/$kernel.console
	cmdline="console=ttyS0 quiet reboot=k panic=-1 sv.run=info"
	start=$(now)
	"$bin" -kernel "$guest/$kernel" -initrd "$guest/initramfs.cpio.gz" -m "$mem" -smp "$smp" \
		-serial stdio -append "$cmdline" -D "$work/$kernel.log" < /dev/null > "$console" 2>&1 &
	pid=$!
	init_s="" vmrss="" ramrss=""
	while kill -0 "$pid" 2> /dev/null; do
		if [ -z "$init_s" ] && grep -q STRATOVIRT-GUEST-INIT "$console"; then
			init_s=$(echo "$(now) - $start" | bc)
			vmrss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
			ramrss=$(rss_of_mapping "$pid" $((mem * 1024)))
		fi
		if [ "$(echo "$(now) - $start > $timeout" | bc)" -eq 1 ]; then
			kill "$pid"
			break
		fi
		sleep 0.2
	done
	rc=0
	wait "$pid" || rc=$?
	total=$(echo "$(now) - $start" | bc)
	if [ -z "$init_s" ]; then
		echo "measure-boot: $kernel did not reach init in $total s (exit $rc); console tail:" >&2
		tail -n 20 "$console" >&2
		rows+=("$(printf '| %s | %d | %d MiB | not reached in %.0f s | | | | exit %d |' \
			"$kernel" "$smp" "$mem" "$total" "$rc")")
		continue
	fi
	overhead=$(((vmrss - ramrss) / 1024))
	printf 'measure-boot: %s: init after %.1f s, VmRSS %d MiB, guest RAM touched %d MiB, VMM %d MiB, ended after %.1f s (exit %d)\n' \
		"$kernel" "$init_s" $((vmrss / 1024)) $((ramrss / 1024)) "$overhead" "$total" "$rc" >&2
	rows+=("$(printf '| %s | %d | %d MiB | %.1f s | %d MiB | %d MiB | %d MiB | %.1f s, exit %d |' \
		"$kernel" "$smp" "$mem" "$init_s" $((vmrss / 1024)) $((ramrss / 1024)) "$overhead" "$total" "$rc")")
done

table=$work/table.md
{
	echo "<!-- measure-boot:begin -->"
	echo "Measured $(date -u +%Y-%m-%d) on $(nproc) host CPUs ($(uname -r), load average $(cut -d' ' -f1 /proc/loadavg) at the end), $(basename "$(dirname "$bin")") build,"
	echo "command line \`console=ttyS0 quiet reboot=k panic=-1 sv.run=info\`:"
	echo
	echo "| kernel | vCPUs | RAM | to init marker | VmRSS | guest RAM touched | VMM overhead | whole run (init, report, reboot) |"
	echo "|---|---|---|---|---|---|---|---|"
	printf '%s\n' "${rows[@]}"
	echo "<!-- measure-boot:end -->"
} > "$table"
awk -v table="$table" '
	/<!-- measure-boot:begin -->/ { while ((getline line < table) > 0) print line; skip = 1; next }
	/<!-- measure-boot:end -->/ { skip = 0; next }
	!skip { print }
' docs/boot.md > "$work/boot.md"
cp "$work/boot.md" docs/boot.md
echo "measure-boot: docs/boot.md updated" >&2
