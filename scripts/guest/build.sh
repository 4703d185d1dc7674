#!/usr/bin/env bash
# Builds the StratoVirt test guest from Debian 12 packages and caches it in
#   "${STRATOVIRT_CACHE:-$HOME/.cache/stratovirt}/guest"
# (vmlinux, bzImage, initramfs.cpio.gz, rootfs.ext4, MANIFEST, and for the stock-kernel
# test vmlinux-stock and initramfs-pause.cpio).
#
# Re-running is a no-op while the cache is complete and its key (a hash of
# every file under scripts/guest/: this script, the Kconfig fragment, the
# kernel patches and the guest scripts) is unchanged. Installs what it needs
# with apt-get (as root) on a fresh Debian 12. Never reads stdin.
#
#   scripts/guest/build.sh              build if needed; last line GUEST_DIR=...
#   scripts/guest/build.sh --print-dir  print the cache directory and exit
#
# See docs/guest.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${STRATOVIRT_CACHE:-${HOME:-/root}/.cache/stratovirt}
out=$cache_root/guest
work=$cache_root/guest-build

# Bump when a recipe below changes in a way the hashed inputs do not show.
kernel_recipe="kernel-v2: allnoconfig + KCONFIG_ALLCONFIG fragment, olddefconfig, make bzImage; stock rebuild"
fio_recipe="fio-v1: apt-get source fio; configure --build-static --disable-native"

# CPU features the PVM instruction emulator cannot execute at CPL0 (docs/guest.md);
# cpu_parse_early_param() reads at most 127 characters of clearcpuid=.
clear_cpuid=cx16,popcnt,xsave,xsaveopt,rdrand,rdseed,rdtscp,rdpid,fsgsbase,smap,clflushopt,clwb,arch_capabilities

packages=(linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev cpio xz-utils
	busybox-static e2fsprogs dpkg-dev libaio-dev zlib1g-dev)

log() { printf 'guest: %s\n' "$*"; }
die() {
	printf 'guest: error: %s\n' "$*" >&2
	exit 1
}

case ${1:-} in
--print-dir)
	printf '%s\n' "$out"
	exit 0
	;;
"") ;;
*) die "usage: $0 [--print-dir]" ;;
esac
exec < /dev/null

input_key() {
	(
		cd "$here"
		find . -type f ! -name '*~' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
	) | sha256sum | cut -c1-16
}

cache_complete() {
	local f
	for f in vmlinux bzImage vmlinux-stock initramfs.cpio.gz initramfs.cpio initramfs-pause.cpio \
		rootfs.ext4 cmdline MANIFEST; do
		[ -s "$out/$f" ] || return 1
	done
	grep -qx "key: $1" "$out/MANIFEST"
}

key=$(input_key)
if cache_complete "$key"; then
	log "cache is up to date (key $key)"
	printf 'GUEST_DIR=%s\n' "$out"
	exit 0
fi

mkdir -p "$cache_root" "$work"
exec 9> "$cache_root/guest.lock"
log "waiting for the build lock" && flock 9
if cache_complete "$key"; then
	log "cache was built meanwhile (key $key)"
	printf 'GUEST_DIR=%s\n' "$out"
	exit 0
fi
log "building guest (key $key) in $work"

# ---- packages ---------------------------------------------------------------
export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_update() {
	[ "$apt_updated" -eq 1 ] && return 0
	log "apt-get update"
	apt-get update -q > "$work/apt-update.log" 2>&1 || {
		tail -n 20 "$work/apt-update.log" >&2
		die "apt-get update failed"
	}
	apt_updated=1
}
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2> /dev/null | grep -q '^ii' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	[ "$(id -u)" -eq 0 ] || die "missing packages (${missing[*]}); run as root to install them"
	apt_update
	log "apt-get install ${missing[*]}"
	apt-get install -y -q --no-install-recommends "${missing[@]}" > "$work/apt-install.log" 2>&1 || {
		tail -n 20 "$work/apt-install.log" >&2
		die "apt-get install failed"
	}
fi

pkg_version() { dpkg-query -W -f='${Version}' "$1"; }
# A static ELF has no program interpreter.
is_static() { ! readelf -l "$1" 2> /dev/null | grep -q 'program interpreter'; }
ksrc_tar=/usr/src/linux-source-6.1.tar.xz
[ -f "$ksrc_tar" ] || die "$ksrc_tar not found (package linux-source-6.1)"
jobs=$(nproc)

# ---- kernel -----------------------------------------------------------------
kernel_key=$(
	{
		echo "$kernel_recipe"
		pkg_version linux-source-6.1
		cat "$here/guest.config" "$here"/patches/*.patch
	} | sha256sum | cut -c1-16
)
kdir=$work/kernel-$kernel_key
if [ ! -f "$kdir/done" ]; then
	rm -rf "$work"/kernel-*
	mkdir -p "$kdir"
	log "kernel: unpacking $ksrc_tar"
	tar -C "$kdir" -xf "$ksrc_tar"
	src=$kdir/linux-source-6.1
	for p in "$here"/patches/*.patch; do
		log "kernel: applying ${p##*/}"
		patch -d "$src" -p1 -s --forward < "$p" || die "patch ${p##*/} failed"
	done
	log "kernel: allnoconfig + guest.config, olddefconfig"
	make -C "$src" -s allnoconfig KCONFIG_ALLCONFIG="$here/guest.config" > "$kdir/config.log" 2>&1 ||
		die "allnoconfig failed (see $kdir/config.log)"
	make -C "$src" -s olddefconfig >> "$kdir/config.log" 2>&1 ||
		die "olddefconfig failed (see $kdir/config.log)"
	log "kernel: make -j$jobs bzImage (about 4-6 minutes on 2 cores; log $kdir/build.log)"
	t0=$SECONDS
	if ! make -C "$src" -j"$jobs" bzImage > "$kdir/build.log" 2>&1; then
		tail -n 30 "$kdir/build.log" >&2
		die "kernel build failed (see $kdir/build.log)"
	fi
	log "kernel: built in $((SECONDS - t0)) s"
	# Every option the fragment sets (=y) or clears (is not set) must have
	# survived olddefconfig: a dependency Kconfig resolved otherwise is fatal.
	bad=0
	while IFS= read -r line; do
		case $line in
		CONFIG_*=* | "# CONFIG_"*" is not set") ;;
		*) continue ;;
		esac
		if ! grep -qxF "$line" "$src/.config"; then
			printf 'guest: error: .config lacks "%s"\n' "$line" >&2
			bad=1
		fi
	done < "$here/guest.config"
	[ "$bad" -eq 0 ] || die "kernel .config does not match guest.config"
	cp "$src/vmlinux" "$src/arch/x86/boot/bzImage" "$src/.config" "$kdir/"
	cp "$src/usr/gen_init_cpio" "$kdir/"
	make -C "$src" -s kernelrelease > "$kdir/kernelrelease"
	# The stock kernel: the same tree without the patches that make guest system calls
	# work (0002, 0003), keeping only the boot patch 0001. Rebuilding it is incremental.
	for p in $(ls "$here"/patches/*.patch | sort -r); do
		case ${p##*/} in 0001-*) continue ;; esac
		log "kernel (stock): reverting ${p##*/}"
		patch -d "$src" -p1 -s -R < "$p" || die "reverting ${p##*/} failed"
	done
	log "kernel (stock): make -j$jobs bzImage (incremental)"
	if ! make -C "$src" -j"$jobs" bzImage > "$kdir/build-stock.log" 2>&1; then
		tail -n 30 "$kdir/build-stock.log" >&2
		die "stock kernel build failed (see $kdir/build-stock.log)"
	fi
	cp "$src/vmlinux" "$kdir/vmlinux-stock"
	rm -rf "$src"
	touch "$kdir/done"
else
	log "kernel: reusing $kdir"
fi

# ---- static fio ---------------------------------------------------------------
ensure_deb_src() {
	apt-cache showsrc fio > /dev/null 2>&1 && apt-cache showsrc fio 2> /dev/null | grep -q '^Package: fio' &&
		return 0
	[ "$(id -u)" -eq 0 ] || die "no deb-src entry for fio; run as root to add one"
	local codename list=/etc/apt/sources.list.d/stratovirt-deb-src
	codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
	log "apt: adding deb-src for the $codename archive"
	if ls /etc/apt/sources.list.d/*.sources > /dev/null 2>&1; then
		# deb822 stanzas of the main archive (Suites has the bare codename).
		awk -v cn="$codename" '
			function flush() {
				if (uri != "" && has_cn && is_deb) {
					print "Types: deb-src"; print uri
					print "Suites: " cn; print "Components: main"
					if (key != "") print key
					print ""
				}
				uri = ""; key = ""; has_cn = 0; is_deb = 0
			}
			/^[ \t]*$/ { flush(); next }
			/^Types:/ { if ($0 ~ /[ \t]deb([ \t]|$)/) is_deb = 1 }
			/^URIs:/ { uri = $0 }
			/^Signed-By:/ { key = $0 }
			/^Suites:/ { for (i = 2; i <= NF; i++) if ($i == cn) has_cn = 1 }
			END { flush() }
		' /etc/apt/sources.list.d/*.sources > "$list.sources"
	fi
	if [ -f /etc/apt/sources.list ]; then
		awk -v cn="$codename" '$1 == "deb" {
			for (i = 2; i <= NF; i++) if ($i == cn) {
				$1 = "deb-src"; NF = i + 1; $(i + 1) = "main"; print; break
			}
		}' /etc/apt/sources.list > "$list.list"
	fi
	[ -s "$list.sources" ] || [ -s "$list.list" ] || die "found no $codename archive in the apt sources"
	apt_updated=0
	apt_update
	apt-cache showsrc fio 2> /dev/null | grep -q '^Package: fio' || die "fio source package not found"
}

fio_key=$(echo "$fio_recipe" | sha256sum | cut -c1-16)
fdir=$work/fio-$fio_key
if [ ! -f "$fdir/done" ]; then
	rm -rf "$work"/fio-*
	mkdir -p "$fdir/src"
	ensure_deb_src
	log "fio: apt-get source fio"
	(cd "$fdir/src" && apt-get source -q fio) > "$fdir/source.log" 2>&1 || {
		tail -n 20 "$fdir/source.log" >&2
		die "apt-get source fio failed"
	}
	fsrc=$(find "$fdir/src" -mindepth 1 -maxdepth 1 -type d -name 'fio-*' | head -n 1)
	[ -n "$fsrc" ] || die "fio source tree not found in $fdir/src"
	sed -n 's/^Version: //p' "$fdir"/src/fio_*.dsc | head -n 1 > "$fdir/version"
	log "fio: configure --build-static --disable-native; make -j$jobs"
	t0=$SECONDS
	(
		cd "$fsrc"
		./configure --build-static --disable-native --disable-numa --disable-rdma \
			--disable-rbd --disable-http --disable-gfapi --disable-pmem --disable-libnfs \
			--disable-xnvme --disable-libzbc --disable-tcmalloc --disable-dfs
		make -j"$jobs"
	) > "$fdir/build.log" 2>&1 || {
		tail -n 30 "$fdir/build.log" >&2
		die "fio build failed (see $fdir/build.log)"
	}
	is_static "$fsrc/fio" || die "fio is not statically linked"
	engines=$("$fsrc/fio" --enghelp)
	for e in psync libaio io_uring; do
		printf '%s\n' "$engines" | grep -qw "$e" || die "fio was built without the $e engine"
	done
	strip -o "$fdir/fio" "$fsrc/fio"
	rm -rf "$fdir/src"
	log "fio: built in $((SECONDS - t0)) s"
	touch "$fdir/done"
else
	log "fio: reusing $fdir"
fi

# ---- assemble the cache -------------------------------------------------------
new=$out.new
rm -rf "$new"
mkdir -p "$new"
cp "$kdir/vmlinux" "$kdir/bzImage" "$kdir/vmlinux-stock" "$new/"
cp "$kdir/.config" "$new/kernel.config"

busybox=/bin/busybox
is_static "$busybox" || die "$busybox is not statically linked (package busybox-static)"
mapfile -t applets < <("$busybox" --list-full | LC_ALL=C sort)
sv=$here/sv

# initramfs: busybox, its applets as symlinks, /init and /sv (gen_init_cpio
# list: no root needed for /dev/console, fixed owner and timestamp).
log "initramfs: writing initramfs.cpio.gz"
list=$work/initramfs.list
{
	for d in /bin /sbin /usr /usr/bin /usr/sbin /dev /proc /sys /tmp /newroot /sv /sv/run; do
		echo "dir $d 0755 0 0"
	done
	echo "nod /dev/console 0600 0 0 c 5 1"
	echo "file /bin/busybox $busybox 0755 0 0"
	for a in "${applets[@]}"; do
		[ "/$a" = /bin/busybox ] || echo "slink /$a /bin/busybox 0777 0 0"
	done
	echo "file /init $sv/init 0755 0 0"
	echo "file /sv/lib.sh $sv/lib.sh 0644 0 0"
	for f in "$sv"/run/*; do
		echo "file /sv/run/${f##*/} $f 0755 0 0"
	done
} > "$list"
"$kdir/gen_init_cpio" -t 0 "$list" > "$work/initramfs.cpio" || die "gen_init_cpio failed"
gzip -9 -n < "$work/initramfs.cpio" > "$new/initramfs.cpio.gz"
mv "$work/initramfs.cpio" "$new/initramfs.cpio"

# initramfs-pause.cpio: /init is pause-init.c, a static program that never makes a
# system call; uncompressed, a few kilobytes, so the emulated kernel unpacks it at once.
log "initramfs: writing initramfs-pause.cpio"
gcc -static -nostdlib -ffreestanding -fno-stack-protector -fno-asynchronous-unwind-tables \
	-O2 -Wl,--build-id=none -o "$work/pause-init" "$here/pause-init.c" || die "pause-init build failed"
if objdump -d "$work/pause-init" | grep -Eq '\s(syscall|sysenter|int)\s'; then
	die "pause-init contains a system call instruction"
fi
is_static "$work/pause-init" || die "pause-init is not statically linked"
{
	echo "dir /dev 0755 0 0"
	echo "nod /dev/console 0600 0 0 c 5 1"
	echo "file /init $work/pause-init 0755 0 0"
} > "$work/initramfs-pause.list"
"$kdir/gen_init_cpio" -t 0 "$work/initramfs-pause.list" > "$new/initramfs-pause.cpio" ||
	die "gen_init_cpio failed (pause)"

# rootfs: the same busybox and scripts plus the static fio, /sv/init as init.
log "rootfs: writing rootfs.ext4 (64 MiB)"
stage=$work/rootfs
rm -rf "$stage"
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,mnt,var/tmp,etc,root,sv/run}
chmod 1777 "$stage/var/tmp"
cp "$busybox" "$stage/bin/busybox"
for a in "${applets[@]}"; do
	[ "/$a" = /bin/busybox ] || ln -s /bin/busybox "$stage/$a"
done
cp "$fdir/fio" "$stage/usr/bin/fio"
cp "$sv/lib.sh" "$stage/sv/lib.sh"
cp "$sv/rootinit" "$stage/sv/init"
cp "$sv"/run/* "$stage/sv/run/"
chmod 0755 "$stage/sv/init" "$stage"/sv/run/*
ln -sf /sv/init "$stage/sbin/init"
echo "root:x:0:0:root:/root:/bin/sh" > "$stage/etc/passwd"
echo "root:x:0:" > "$stage/etc/group"
rm -f "$new/rootfs.ext4"
mkfs.ext4 -q -F -L svroot -U 5e1f0000-0000-4000-8000-000000000001 -E root_owner=0:0 \
	-d "$stage" "$new/rootfs.ext4" 64M > "$work/mkfs.log" 2>&1 || {
	cat "$work/mkfs.log" >&2
	die "mkfs.ext4 failed"
}
rm -rf "$stage"

# The base kernel command line for this host (see docs/guest.md): the KVM
# here does not hide CPUID bits from the guest kernel, so the kernel clears
# the features its instruction emulator cannot execute itself.
echo "console=ttyS0 quiet reboot=k panic=-1 clearcpuid=$clear_cpuid" > "$new/cmdline"

{
	echo "# StratoVirt test guest, built by scripts/guest/build.sh (see docs/guest.md)"
	echo "key: $key"
	echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "kernel: $(cat "$kdir/kernelrelease") from linux-source-6.1 $(pkg_version linux-source-6.1)"
	echo "kernel-patches: $(cd "$here/patches" && ls *.patch | tr '\n' ' ')"
	echo "vmlinux-stock: the same kernel with only 0001-* applied"
	echo "busybox-static: $(pkg_version busybox-static)"
	echo "fio: $(cat "$fdir/version") (static, /usr/bin/fio in rootfs.ext4)"
	echo "e2fsprogs: $(pkg_version e2fsprogs)"
	echo "gcc: $(gcc -dumpfullversion)"
	echo "files:"
	(cd "$new" && for f in vmlinux bzImage vmlinux-stock initramfs.cpio.gz initramfs.cpio \
		initramfs-pause.cpio rootfs.ext4 cmdline kernel.config; do
		printf '  %s %s %s\n' "$f" "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -c1-64)"
	done)
} > "$new/MANIFEST"

rm -rf "$out"
mv "$new" "$out"
log "done: $(cd "$out" && ls | tr '\n' ' ')"
printf 'GUEST_DIR=%s\n' "$out"
