#!/usr/bin/sh
# PID 1 of the test OS after switch_root (/usr/lib/testos/init; qemu-tests/src/testos.rs).
#
# Prints the boot marker the harness waits for, runs the boot hooks, then serves commands on
# the serial console: each input line is "<seq> <shell command>"; the output of the command is
# framed by "TESTOS: begin <seq>" and "TESTOS: end <seq> rc=<status>". Kernel messages are
# silenced first so they cannot interleave with command output.
export PATH=/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# A RAM-booted node's initramfs hands over its /run (the /usr image and the netboot record).
grep -q " /run " /proc/mounts || mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
dmesg -n 1
# shellcheck source=/dev/null
. /usr/lib/os-release
fallback=0
grep -qw updater.fallback=1 /proc/cmdline && fallback=1
echo "TESTOS: booted usr=$TESTOS_USR_PARTUUID version=$IMAGE_VERSION fallback=$fallback"
echo "TESTOS: cmdline $(cat /proc/cmdline)"
for hook in /usr/lib/testos/boot.d/* /etc/testos/boot.d/*; do
	[ -x "$hook" ] || continue
	echo "TESTOS: hook $hook"
	"$hook"
	echo "TESTOS: hook $hook rc=$?"
done
stty -echo -onlcr 2>/dev/null
echo "TESTOS: ready"
while IFS= read -r line; do
	seq=${line%% *}
	cmd=${line#* }
	echo "TESTOS: begin $seq"
	(eval "$cmd") </dev/null 2>&1
	echo "TESTOS: end $seq rc=$?"
done
echo "TESTOS: console closed, powering off"
poweroff -f
