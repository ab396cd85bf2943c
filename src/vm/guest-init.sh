#!/bin/busybox sh
# Second stage of the test guest, /init on the root file system (the Fabric volume): runs the
# step named on the kernel command line and powers the machine off. Lines starting with
# "FABRIC-VM:" are read by the test on the serial console:
#
#   fabric.step=write   writes /data/payload (4 MiB of random bytes) and its sha256 beside it;
#                       prints "payload HASH".
#   fabric.step=read    checks the payload against its recorded sha256, and every file the
#                       stress step wrote against its own; prints "payload HASH" (or
#                       "payload none") and "verified N rounds".
#   fabric.step=stress  writes round after round, each a new 16 KiB file, its sha256 appended
#                       to /data/stress/sums, then sync; prints "round N" once a round is
#                       synced (numbered on from earlier stress boots). Stops when a line
#                       arrives on the console and prints "rounds N", the last synced round;
#                       fails after fabric.rounds_max rounds in all (the host never said stop).
#
# Every step ends with "done" and a clean power-off (file system synced and remounted read
# only, so it needs no journal recovery), or with "FAIL reason".

/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t tmpfs tmpfs /tmp

say() {
    echo "FABRIC-VM: $*"
}

power_off() {
    sync
    mount -o remount,ro /
    poweroff -f
}

fail() {
    say "FAIL $*"
    power_off
}

step=
rounds_max=3000
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    fabric.step=*) step=${arg#*=} ;;
    fabric.rounds_max=*) rounds_max=${arg#*=} ;;
    esac
done
say "step $step"

case "$step" in
write)
    dd if=/dev/urandom of=/data/payload bs=64k count=64 conv=fsync 2>/dev/null ||
        fail "write the payload"
    (cd /data && sha256sum payload >payload.sha256) || fail "hash the payload"
    sync
    say "payload $(cut -d ' ' -f 1 /data/payload.sha256)"
    ;;
read)
    if [ -f /data/payload.sha256 ]; then
        (cd /data && sha256sum -c -s payload.sha256) || fail "payload differs from its sha256"
        say "payload $(sha256sum /data/payload | cut -d ' ' -f 1)"
    else
        say "payload none"
    fi
    rounds=0
    if [ -s /data/stress/sums ]; then
        if ! (cd /data/stress && sha256sum -c -s sums); then
            (cd /data/stress && sha256sum -c sums | grep -v ': OK$' | head -n 5)
            fail "stress files differ from their sha256"
        fi
        rounds=$(wc -l </data/stress/sums)
    fi
    say "verified $rounds rounds"
    ;;
stress)
    # The console must not echo the host's stop line: the echo lands in the middle of
    # whatever line the guest is printing and breaks its marker.
    stty -echo </dev/console
    (
        read -r _
        touch /tmp/stop
    ) </dev/console &
    # A later stress boot goes on from the rounds of the earlier ones.
    n=0
    [ -f /data/stress/sums ] && n=$(wc -l </data/stress/sums)
    while [ ! -e /tmp/stop ]; do
        [ "$n" -lt "$rounds_max" ] || fail "$rounds_max rounds and the host never said stop"
        n=$((n + 1))
        dd if=/dev/urandom of="/data/stress/r$n" bs=4k count=4 conv=fsync 2>/dev/null ||
            fail "write round $n"
        (cd /data/stress && sha256sum "r$n" >>sums) || fail "hash round $n"
        sync
        say "round $n"
    done
    # Printed after the stop line was read, so nothing else is typed on the console now.
    say "rounds $n"
    ;;
*)
    fail "unknown step '$step'"
    ;;
esac

say done
power_off
