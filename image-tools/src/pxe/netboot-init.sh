#!/bin/busybox sh
# /init of a RAM-booted node's initramfs (written by `image-tools pxe`, docs/usage/pxe.md).
#
# 1. loads the modules listed in /lib/modules/netboot/load-order (network driver, loop, the
#    /usr filesystem), brings the network up with DHCP (busybox udhcpc);
# 2. mounts a tmpfs as the new root and another at its /run, and runs
#    `updater netboot`, which fetches the signed payload named on the kernel command line
#    (updater.url=URL, or updater.stream=URL [updater.channel=NAME] [updater.wariness=W]),
#    checks its signature against /etc/updater/keys.d and verifies every chunk into
#    /run/netboot/usr.img (nothing is left there unless all of it verified);
# 3. mounts that image read-only at /usr of the new root and switches root into
#    updater.init=PATH (default from /etc/updater/netboot.env, else /sbin/init).
#
# Console lines start with "NETBOOT:". A refused payload is never mounted: the node prints why
# and then, by updater.on_failure=reboot|poweroff|shell (default reboot), reboots after ten
# seconds (to try the boot server again), powers off, or drops to a shell.
/bin/busybox mkdir -p /proc /sys /dev /run /newroot /etc /bin
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

NETBOOT_IMAGE_ID=""
NETBOOT_MIN_VERSION=""
NETBOOT_INIT=/sbin/init
# shellcheck source=/dev/null
[ -f /etc/updater/netboot.env ] && . /etc/updater/netboot.env

url=""
stream=""
channel=stable
wariness=""
on_failure=reboot
init="$NETBOOT_INIT"
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	updater.url=*) url="${arg#updater.url=}" ;;
	updater.stream=*) stream="${arg#updater.stream=}" ;;
	updater.channel=*) channel="${arg#updater.channel=}" ;;
	updater.wariness=*) wariness="${arg#updater.wariness=}" ;;
	updater.on_failure=*) on_failure="${arg#updater.on_failure=}" ;;
	updater.init=*) init="${arg#updater.init=}" ;;
	esac
done

fail() {
	echo "NETBOOT: failed: $*; nothing mounted"
	case "$on_failure" in
	poweroff)
		sleep 1
		poweroff -f
		;;
	shell) exec sh ;;
	*)
		echo "NETBOOT: rebooting in 10 seconds"
		sleep 10
		reboot -f
		;;
	esac
}

echo "NETBOOT: initramfs started"
[ -n "$NETBOOT_IMAGE_ID" ] || fail "no NETBOOT_IMAGE_ID in /etc/updater/netboot.env"
[ -n "$url$stream" ] || fail "no updater.url= or updater.stream= on the kernel command line"

if [ -f /lib/modules/netboot/load-order ]; then
	while read -r module; do
		[ -n "$module" ] || continue
		insmod "/lib/modules/netboot/$module" || fail "loading module $module"
	done </lib/modules/netboot/load-order
fi

# udhcpc calls this with the lease in its environment.
mkdir -p /etc/udhcpc
cat >/etc/udhcpc/script <<'EOF'
#!/bin/sh
case "$1" in
bound | renew)
	ip addr flush dev "$interface"
	ip addr add "$ip/${mask:-24}" dev "$interface"
	for r in $router; do ip route add default via "$r" dev "$interface" && break; done
	: >/etc/resolv.conf
	for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
	echo "NETBOOT: $interface has $ip/${mask:-24} via ${router:-none}"
	;;
esac
EOF
chmod 755 /etc/udhcpc/script
ip link set lo up
up=""
tries=0
while [ -z "$up" ]; do
	for ifc in /sys/class/net/*; do
		ifc=$(basename "$ifc")
		[ "$ifc" = lo ] && continue
		ip link set "$ifc" up
		if udhcpc -i "$ifc" -n -q -t 5 -T 2 -s /etc/udhcpc/script >/dev/null 2>&1; then
			up=$ifc
			break
		fi
	done
	if [ -z "$up" ]; then
		tries=$((tries + 1))
		[ $tries -lt 10 ] || fail "no DHCP answer on any network interface"
		echo "NETBOOT: no DHCP answer yet, retrying"
		sleep 2
	fi
done

mount -t tmpfs -o mode=0755 tmpfs /newroot || fail "mounting a tmpfs as the root"
mkdir -p /newroot/run /newroot/usr
mount -t tmpfs -o mode=0755 tmpfs /newroot/run || fail "mounting a tmpfs at /run"
set -- --image-id "$NETBOOT_IMAGE_ID" --new-root /newroot --output /run/netboot/usr.img
[ -n "$NETBOOT_MIN_VERSION" ] && set -- "$@" --min-version "$NETBOOT_MIN_VERSION"
if [ -n "$url" ]; then
	set -- "$@" --url "$url"
	echo "NETBOOT: fetching $url"
else
	set -- "$@" --stream "$stream" --channel "$channel"
	[ -n "$wariness" ] && set -- "$@" --wariness "$wariness"
	echo "NETBOOT: choosing a release from $stream (channel $channel)"
fi
/bin/updater netboot "$@" || fail "updater netboot refused or could not fetch the payload"
mount -o ro,loop /newroot/run/netboot/usr.img /newroot/usr || {
	rm -f /newroot/run/netboot/usr.img
	fail "mounting the verified image"
}
echo "NETBOOT: mounted the verified image at /usr"
for d in dev proc sys tmp etc var root; do
	mkdir -p "/newroot/$d"
done
for l in bin sbin lib lib64; do
	[ -e "/newroot/usr/$l" ] && [ ! -e "/newroot/$l" ] && ln -s "usr/$l" "/newroot/$l"
done
[ -f /etc/resolv.conf ] && cp /etc/resolv.conf /newroot/etc/resolv.conf
[ -x "/newroot$init" ] || fail "no $init in the new root"
umount /sys /proc
umount /dev
exec switch_root /newroot "$init"
