#!/bin/busybox sh
# First stage of the test guest, PID 1 of its initramfs: load the drivers of the virtio disk
# and of ext4, mount the disk (/dev/vda, the Fabric volume) and hand over to its /init.
# Lines starting with "FABRIC-VM:" are read by the test on the serial console.

/bin/busybox --install -s /bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc

fail() {
    echo "FABRIC-VM: FAIL $*"
    poweroff -f
}

# The host wrote the module files in dependency order.
while read -r module; do
    insmod "/lib/modules/$module" || fail "insmod $module"
done </lib/modules/load-order

# virtio_blk finds its disk a moment after it is loaded.
tries=0
while [ ! -b /dev/vda ]; do
    tries=$((tries + 1))
    [ "$tries" -le 100 ] || fail "no /dev/vda 20 s after loading virtio_blk"
    sleep 0.2
done

mount -t ext4 /dev/vda /newroot || fail "mount /dev/vda"
umount /proc
mount --move /dev /newroot/dev
exec switch_root /newroot /init
