#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets (fuzz/, cargo-fuzz with libFuzzer) for SECONDS each:
# the 20-second smoke run of scripts/test-all.sh, or longer runs by hand (docs/fuzzing.md).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     default: 20 seconds, every target
#
# Needs a nightly toolchain (libFuzzer's instrumentation); installs cargo-fuzz into
# ${STRATOVIRT_CACHE:-~/.cache/stratovirt}/tools when it is missing. Each target starts from
# its seeds (fuzz/seeds/TARGET, read only) and what earlier runs found (fuzz/corpus/TARGET,
# kept on this machine only). A crash, a failed check or an input that runs longer than 10 s
# fails the run; the input is saved under fuzz/artifacts/TARGET (see docs/fuzzing.md).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-20}
shift || true
cargo_fuzz_version=0.13.2
tools=${STRATOVIRT_CACHE:-$HOME/.cache/stratovirt}/tools
export PATH="$tools/bin:$PATH"

if ! cargo +nightly --version >/dev/null 2>&1; then
	echo "fuzz: the fuzz targets need a nightly toolchain (rustup toolchain install nightly)" >&2
	exit 1
fi
if [ "$(cargo-fuzz --version 2>/dev/null)" != "cargo-fuzz $cargo_fuzz_version" ]; then
	echo "fuzz: installing cargo-fuzz $cargo_fuzz_version into $tools"
	cargo install --quiet --locked --root "$tools" --version "$cargo_fuzz_version" cargo-fuzz
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
	mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build

log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in "${targets[@]}"; do
	mkdir -p "fuzz/corpus/$target"
	if ! cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
		-max_total_time="$seconds" -timeout=10 2>"$log"; then
		tail -n 60 "$log" >&2
		echo "fuzz: $target FAILED (the input is under fuzz/artifacts/$target)" >&2
		exit 1
	fi
	done_line=$(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1)
	echo "fuzz: $target: ${done_line:-no summary}"
done
