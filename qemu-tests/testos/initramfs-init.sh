#!/bin/busybox sh
# /init of the test OS initramfs (qemu-tests/src/testos.rs puts it there).
#
# Loads the kernel modules listed in /lib/modules/load-order, finds the USR partition named by
# mount.usr=PARTUUID=<uuid> on the kernel command line (PARTUUIDs are read from the GPT itself:
# busybox has no blkid for them, and the backup GPT is used when the primary header is gone),
# finds the partition labelled ROOT on the same disk, mounts ROOT read-write and USR read-only
# at /usr of it, and switches root into /usr/lib/testos/init. Any failure prints a
# "TESTOS: initramfs error:" line and powers off, so a test fails fast instead of hanging.
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
	echo "TESTOS: initramfs error: $*"
	sleep 1
	poweroff -f
}

echo "TESTOS: initramfs started"
while read -r module; do
	insmod "/lib/modules/$module" || fail "loading module $module"
done < /lib/modules/load-order

usr=""
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	mount.usr=PARTUUID=*) usr="${arg#mount.usr=PARTUUID=}" ;;
	mount.usr=*) fail "mount.usr must be PARTUUID=<uuid>, got ${arg#mount.usr=}" ;;
	esac
done
[ -n "$usr" ] || fail "no mount.usr=PARTUUID=<uuid> on the kernel command line"
usr=$(echo "$usr" | tr 'A-F' 'a-f')

# le <disk> <offset> <bytes>: an unsigned little-endian integer read from the disk.
le() {
	od -An -tu"$3" -j "$2" -N "$3" "/dev/$1" | tr -d ' '
}

# partuuid <disk> <partition number>: the entry's unique GUID, lower case.
partuuid() {
	ss=$(cat "/sys/block/$1/queue/logical_block_size")
	hdr=$ss
	if [ "$(dd if="/dev/$1" bs=1 skip="$hdr" count=8 2>/dev/null)" != "EFI PART" ]; then
		hdr=$(($(cat "/sys/block/$1/size") * 512 - ss))
	fi
	lba=$(le "$1" $((hdr + 72)) 8)
	esize=$(le "$1" $((hdr + 84)) 4)
	# shellcheck disable=SC2046
	set -- $(od -An -tx1 -j $((lba * ss + ($2 - 1) * esize + 16)) -N 16 "/dev/$1")
	echo "$4$3$2$1-$6$5-$8$7-$9${10}-${11}${12}${13}${14}${15}${16}"
}

usrdev=""
rootdev=""
tries=0
while [ -z "$usrdev" ]; do
	for part in /sys/class/block/*; do
		[ -f "$part/partition" ] || continue
		disk=$(basename "$(readlink -f "$part/..")")
		if [ "$(partuuid "$disk" "$(cat "$part/partition")")" = "$usr" ]; then
			usrdev=$(basename "$part")
			usrdisk=$disk
		fi
	done
	if [ -z "$usrdev" ]; then
		tries=$((tries + 1))
		[ $tries -lt 100 ] || fail "no partition with PARTUUID $usr"
		sleep 0.1
	fi
done
for part in /sys/block/"$usrdisk"/"$usrdisk"*; do
	grep -qx PARTNAME=ROOT "$part/uevent" && rootdev=$(basename "$part")
done
[ -n "$rootdev" ] || fail "no partition labelled ROOT on $usrdisk"

mount -t ext4 "/dev/$rootdev" /newroot || fail "mounting ROOT /dev/$rootdev"
mkdir -p /newroot/usr
mount -o ro "/dev/$usrdev" /newroot/usr || fail "mounting USR /dev/$usrdev"
[ -x /newroot/usr/lib/testos/init ] || fail "no /usr/lib/testos/init on /dev/$usrdev"
for d in dev proc sys run tmp etc var; do
	mkdir -p "/newroot/$d"
done
for l in bin sbin lib; do
	[ -e "/newroot/$l" ] || ln -s "usr/$l" "/newroot/$l"
done
export TESTOS_USR_PARTUUID="$usr" TESTOS_USR_DEV="/dev/$usrdev" TESTOS_ROOT_DEV="/dev/$rootdev"
umount /sys /proc
umount /dev
exec switch_root /newroot /usr/lib/testos/init
