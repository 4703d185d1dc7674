# Shared helpers for the StratoVirt test guest's init scripts (busybox sh).
# Sourced, never executed. Keeps forks to a minimum: every fork and exec is
# slow under the emulated guest kernel, so parsing uses shell builtins only.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin

sv_cmdline=
[ -r /proc/cmdline ] && read -r sv_cmdline < /proc/cmdline

# sv_get VAR KEY [DEFAULT]: set VAR to the value of the last KEY=VALUE word
# on the kernel command line, or to DEFAULT when KEY is absent.
sv_get() {
	_sv_val=$3
	set -f
	for _sv_word in $sv_cmdline; do
		case $_sv_word in
		"$2="*) _sv_val=${_sv_word#*=} ;;
		esac
	done
	set +f
	eval "$1=\$_sv_val"
}

# sv_uptime VAR: set VAR to the seconds since boot (/proc/uptime, 1/100 s).
sv_uptime() {
	read -r _sv_up _sv_idle < /proc/uptime
	eval "$1=\$_sv_up"
}

# Mount /proc, /sys and /dev unless already mounted (the kernel mounts
# devtmpfs itself when it mounts an ext4 root), and a tmpfs on /tmp.
sv_mount_basics() {
	[ -e /proc/self ] || mount -t proc proc /proc
	[ -d /sys/block ] || mount -t sysfs sysfs /sys
	[ -e /dev/null ] || mount -t devtmpfs devtmpfs /dev
	read -r sv_cmdline < /proc/cmdline
}

sv_mount_tmp() {
	mount -t tmpfs -o size=16m tmpfs /tmp
}

# Run every script named in sv.run (comma separated, from /sv/run), then the
# base64-encoded shell command in sv.cmd. Sets sv_rc to the first failure.
sv_dispatch() {
	sv_rc=0
	sv_get _sv_names sv.run ""
	sv_get _sv_cmd sv.cmd ""
	if [ -z "$_sv_names" ] && [ -z "$_sv_cmd" ]; then
		echo "SV-RUN-NONE"
		return
	fi
	_sv_ifs=$IFS
	IFS=,
	set -f
	for _sv_name in $_sv_names; do
		IFS=$_sv_ifs
		sv_run_one "$_sv_name"
	done
	set +f
	IFS=$_sv_ifs
	if [ -n "$_sv_cmd" ]; then
		sv_uptime _sv_t
		echo "SV-RUN-BEGIN name=cmd uptime=$_sv_t"
		if _sv_script=$(echo "$_sv_cmd" | base64 -d) && [ -n "$_sv_script" ]; then
			sh -c "$_sv_script"
			_sv_r=$?
		else
			echo "SV-RUN-BADCMD"
			_sv_r=2
		fi
		echo "SV-RUN-END name=cmd rc=$_sv_r"
		[ "$sv_rc" -ne 0 ] || sv_rc=$_sv_r
	fi
}

sv_run_one() {
	case $1 in
	"" | *[!A-Za-z0-9_-]*) _sv_r=127 ;;
	*) [ -f "/sv/run/$1" ] && _sv_r=0 || _sv_r=127 ;;
	esac
	if [ "$_sv_r" -ne 0 ]; then
		echo "SV-RUN-UNKNOWN name=$1"
	else
		sv_uptime _sv_t
		echo "SV-RUN-BEGIN name=$1 uptime=$_sv_t"
		sh "/sv/run/$1"
		_sv_r=$?
		echo "SV-RUN-END name=$1 rc=$_sv_r"
	fi
	[ "$sv_rc" -ne 0 ] || sv_rc=$_sv_r
}

# Print the final marker and end the VM (reboot=k on the command line makes
# the reboot end the VMM). If the reboot call returns, exiting PID 1 panics
# the kernel, and panic=-1 reboots at once.
sv_finish() {
	sync
	sv_uptime _sv_t
	echo "STRATOVIRT-GUEST-DONE rc=$1 uptime=$_sv_t"
	mount -o remount,ro / 2>/dev/null
	reboot -f
	echo "SV-REBOOT-FAILED"
	exit "$1"
}
