//! The scripts that run inside L2: the initramfs /init of every scenario
//! (markers for the host to check), and the rootfs scenario's initramfs and
//! on-disk init.

use crate::scripts::{blob_vars, sh_quote};

/// The L2 guest's /init. `modules`: for each virtio driver module the
/// L2 initramfs carries under /lib/modules, the module files it needs in
/// insmod order (its dependencies first, itself last), e.g.
/// `("virtio_blk", ["virtio_ring", "virtio", "virtio_blk"])`.
pub fn l2_init(modules: &[(String, Vec<String>)]) -> String {
    let mut s = String::from("#!/bin/sh\n");
    for (m, deps) in modules {
        s.push_str(&format!("SZ_MOD_{m}={}\n", sh_quote(&deps.join(" "))));
    }
    s.push_str(&blob_vars());
    s.push_str(&L2_INIT_BODY.replace("__PT_CASES__", crate::pt_scripts::L2_CASES));
    s
}

pub(crate) const L2_INIT_BODY: &str = r#"echo "@@L2 INIT scenario=$sz_scenario"
# The kernel's clock as close to the marker as can be: one mount, and the
# shell's own read.
/bin/busybox mount -t proc proc /proc
read -r sz_uptime sz_idle </proc/uptime
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox mkdir -p /proc /sys /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "@@L2 UPTIME $sz_uptime"

# sz_load MODULE...: insmods each module after those it depends on.
sz_load() {
    for top in "$@"; do
        eval "mods=\$SZ_MOD_$top"
        [ -n "$mods" ] || echo "@@L2 INSMOD_FAILED $top: not in this initramfs"
        for m in $mods; do
            [ -d /sys/module/$m ] && continue
            out=$(insmod /lib/modules/$m.ko 2>&1) || echo "@@L2 INSMOD_FAILED $m: $out"
        done
    done
}
# sz_wait PATH: waits up to 5 s for PATH to appear.
sz_wait() {
    n=0
    while [ ! -e "$1" ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
    [ -e "$1" ] || echo "@@L2 MISSING $1"
}
# sz_try KEY COMMAND...: runs COMMAND, prints `@@L2 KEY ok|failed: <output>`.
sz_try() {
    key=$1
    shift
    if out=$("$@" 2>&1); then
        echo "@@L2 $key ok $(printf '%s' "$out" | tr '\n' ' ')"
    else
        echo "@@L2 $key failed: $(printf '%s' "$out" | tr '\n' ' ')"
    fi
}
sz_sha() { sha256sum | cut -d' ' -f1; }

case "$sz_scenario" in
boot | stats | live | hw-exits | vmlinux-*)
    echo "@@L2 UNAME $(uname -r)"
    echo "@@L2 PCI_DEVICES $(ls /sys/bus/pci/devices 2>/dev/null | tr '\n' ' ')"
    echo "@@L2 PCI_HOST_CLASS $(cat /sys/bus/pci/devices/0000:00:00.0/class 2>/dev/null)"
    ;;
__PT_CASES__smp)
    echo "@@L2 NPROC $(nproc)"
    echo "@@L2 CPU_ONLINE $(cat /sys/devices/system/cpu/online)"
    echo "@@L2 CPUINFO_PROCESSORS $(grep -c '^processor' /proc/cpuinfo)"
    ;;
memory)
    echo "@@L2 MEMTOTAL_KB $(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
    ;;
panic)
    echo "@@L2 PANIC_TRIGGER"
    echo c > /proc/sysrq-trigger
    echo "@@L2 STILL_ALIVE"
    exit 1
    ;;
stdin)
    echo "@@L2 READY"
    IFS= read -r line
    echo "@@L2 ECHO [$line]"
    ;;
block)
    sz_load virtio_mmio virtio_blk
    sz_wait /dev/vda
    echo "@@L2 DISK_SECTORS $(cat /sys/block/vda/size)"
    echo "@@L2 DISK_RO $(cat /sys/block/vda/ro)"
    mkdir -p /mnt
    sz_try MOUNT mount -t ext4 /dev/vda /mnt
    echo "@@L2 KNOWN_SHA256 $(sz_sha < /mnt/known.bin)"
    sz_try WRITE sh -c "lab-peer gen $SZ_WRITTEN_FILE > /mnt/written.bin && sync"
    sz_try UMOUNT umount /mnt
    ;;
block-ro)
    sz_load virtio_mmio virtio_blk
    sz_wait /dev/vda
    echo "@@L2 DISK_RO $(cat /sys/block/vda/ro)"
    mkdir -p /mnt
    sz_try MOUNT mount -t ext4 /dev/vda /mnt
    echo "@@L2 MOUNT_OPTIONS $(awk '$2 == "/mnt" { print $4 }' /proc/mounts)"
    echo "@@L2 KNOWN_SHA256 $(sz_sha < /mnt/known.bin)"
    sz_try FS_WRITE sh -c 'echo x > /mnt/new.txt'
    sz_try DEV_WRITE dd if=/dev/zero of=/dev/vda bs=4096 count=1 oflag=direct conv=notrunc
    umount /mnt
    ;;
block-rate)
    sz_load virtio_mmio virtio_blk
    sz_wait /dev/vda
    t0=$(cut -d' ' -f1 /proc/uptime)
    sz_try RATE_DD dd if=/dev/vda of=/dev/null bs=1M count=16 iflag=direct
    t1=$(cut -d' ' -f1 /proc/uptime)
    echo "@@L2 DISK_SECTORS $(cat /sys/block/vda/size)"
    echo "@@L2 RATE_UPTIMES $t0 $t1"
    ;;
net)
    sz_load virtio_mmio virtio_net
    sz_wait /sys/class/net/eth0
    echo "@@L2 MAC $(cat /sys/class/net/eth0/address)"
    echo "@@L2 NET_FEATURES $(cat /sys/class/net/eth0/device/features)"
    ip addr add 169.254.0.2/16 dev eth0
    ip link set eth0 up
    ping -c 3 -W 5 169.254.0.1 >/tmp/ping 2>&1
    echo "@@L2 PING $(grep 'packets transmitted' /tmp/ping)"
    lab-peer connect tcp:169.254.0.1:8000 --retry 10 </dev/null >/tmp/net.bin
    echo "@@L2 DOWNLOAD_SHA256 $(sz_sha < /tmp/net.bin)"
    sz_try UPLOAD lab-peer connect tcp:169.254.0.1:8001 --retry 10 </tmp/net.bin
    ;;
net-mq)
    # As net, on two queue pairs: the driver asks for one per vCPU.
    sz_load virtio_mmio virtio_net
    sz_wait /sys/class/net/eth0
    echo "@@L2 NET_FEATURES $(cat /sys/class/net/eth0/device/features)"
    echo "@@L2 NET_QUEUES $(ls /sys/class/net/eth0/queues | tr '\n' ' ')"
    ip addr add 169.254.0.2/16 dev eth0
    ip link set eth0 up
    ping -c 3 -W 5 169.254.0.1 >/tmp/ping 2>&1
    echo "@@L2 PING $(grep 'packets transmitted' /tmp/ping)"
    lab-peer connect tcp:169.254.0.1:8000 --retry 20 </dev/null >/tmp/net.bin
    echo "@@L2 DOWNLOAD_SHA256 $(sz_sha < /tmp/net.bin)"
    sz_try UPLOAD lab-peer connect tcp:169.254.0.1:8001 --retry 10 </tmp/net.bin
    ;;
vsock)
    sz_load virtio_mmio vmw_vsock_virtio_transport
    sz_wait /dev/vsock
    echo "@@L2 VSOCK_A_SHA256 $(lab-peer gen $SZ_VSOCK_A_GUEST | lab-peer listen vsock:5000 --timeout 40 | sz_sha)"
    echo "@@L2 VSOCK_B_SHA256 $(lab-peer gen $SZ_VSOCK_B_GUEST | lab-peer connect vsock:2:5001 --retry 20 | sz_sha)"
    ;;
rng)
    sz_load virtio_mmio virtio_rng
    n=0
    while [ "$(cat /sys/class/misc/hw_random/rng_current)" = none ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
    echo "@@L2 RNG_AVAILABLE $(cat /sys/class/misc/hw_random/rng_available)"
    echo "@@L2 RNG_CURRENT $(cat /sys/class/misc/hw_random/rng_current)"
    head -c 4096 /dev/hwrng >/tmp/rng
    echo "@@L2 RNG_BYTES $(wc -c < /tmp/rng)"
    echo "@@L2 RNG_DISTINCT $(od -An -v -tu1 /tmp/rng | tr -s ' ' '\n' | grep -v '^$' | sort -u | wc -l)"
    ;;
api)
    # Set up everything, then count until L1 has connected to both
    # listeners (after the snapshot and restore), then check the disk.
    sz_load virtio_mmio virtio_blk virtio_net vmw_vsock_virtio_transport
    sz_wait /dev/vda
    sz_wait /sys/class/net/eth0
    sz_wait /dev/vsock
    mkdir -p /mnt
    sz_try MOUNT mount -t ext4 /dev/vda /mnt
    sz_try WRITE sh -c "lab-peer gen $SZ_API_FILE > /mnt/api.bin && sync"
    echo "@@L2 WRITTEN_SHA256 $(sz_sha < /mnt/api.bin)"
    bid=$(cat /proc/sys/kernel/random/boot_id)
    echo "@@L2 BOOT_ID $bid"
    ip addr add 169.254.0.2/16 dev eth0
    ip link set eth0 up
    (
        # A second try for a connection dropped by the guest: see
        # VSOCK_RETRY in lab/src/api_scripts.rs.
        want=$(lab-peer gen $SZ_API_VSOCK_HOST | sz_sha)
        for try in 1 2; do
            h=$(lab-peer gen $SZ_API_VSOCK_GUEST | lab-peer listen vsock:5000 --timeout 900 2>/tmp/vs.err | sz_sha)
            echo "@@L2 VSOCK_TRY $try $(cat /tmp/vs.err)"
            [ "$h" = "$want" ] && break
        done
        echo "@@L2 VSOCK_RX_SHA256 $h"
        touch /tmp/vsock.done
    ) &
    (
        h=$(lab-peer gen $SZ_API_TCP_GUEST | lab-peer listen tcp:0.0.0.0:7000 --timeout 900 2>/tmp/tcp.err | sz_sha)
        echo "@@L2 TCP_RX_SHA256 $h"
        echo "@@L2 TCP_LOG $(cat /tmp/tcp.err)"
        touch /tmp/tcp.done
    ) &
    echo "@@L2 READY"
    n=0
    while [ ! -e /tmp/vsock.done ] || [ ! -e /tmp/tcp.done ]; do
        n=$((n + 1))
        echo "@@L2 COUNT $n boot_id=$bid"
        sleep 0.2
    done
    echo "@@L2 COUNTED $n"
    # Read the file from the disk again, not from the page cache.
    echo 3 >/proc/sys/vm/drop_caches
    echo "@@L2 REREAD_SHA256 $(sz_sha < /mnt/api.bin)"
    echo "@@L2 BOOT_ID_END $(cat /proc/sys/kernel/random/boot_id)"
    sz_try UMOUNT umount /mnt
    ;;
boot-bench)
    # The boot benchmark (lab/src/boot_scripts.rs): INIT and UPTIME above
    # are its figures. A timed boot holds while L1 reads the VMM's smaps; a
    # diagnostic boot (sz_bb=diag, with initcall_debug) reports the
    # kernel's own timings from dmesg instead. Then a reset through the
    # i8042 (reboot=k), the one way out of Firecracker.
    if [ "$sz_bb" = diag ]; then
        dmesg -s 16777216 >/tmp/dmesg 2>&1
        : >/tmp/initcalls
        awk '
        {
            ts = "-"
            msg = $0
            if (substr($0, 1, 1) == "[") {
                i = index($0, "]")
                ts = substr($0, 2, i - 2)
                gsub(/ /, "", ts)
                msg = substr($0, i + 2)
            }
        }
        msg ~ /^initcall .* returned -?[0-9]+ after [0-9]+ usecs/ {
            n = split(msg, w, " ")
            total += w[n - 1]
            count++
            print w[n - 1], w[2], w[n - 3] > "/tmp/initcalls"
            next
        }
        msg ~ /Linux version/ { key = "linux-version" }
        msg ~ /Calibrating delay loop|tsc: Refined|tsc: Detected/ { key = "calibration" }
        msg ~ /clocksource: Switched to clocksource/ { key = "clocksource" }
        msg ~ /Trying to unpack rootfs image/ { key = "unpack-initrd" }
        msg ~ /Freeing initrd memory/ { key = "free-initrd" }
        msg ~ /Freeing unused kernel image/ { key = "free-initmem" }
        msg ~ /Run \/init as init process/ { key = "run-init" }
        key != "" {
            print "@@L2 DMESG_AT " key " " ts " " substr(msg, 1, 100)
            key = ""
        }
        END { print "@@L2 INITCALL_TOTAL " total + 0 " " count + 0 }
        ' /tmp/dmesg
        sort -n -r /tmp/initcalls | head -n 15 | while read -r us fn ret; do
            echo "@@L2 INITCALL $us $fn ret=$ret"
        done
        echo "@@L2 DMESG_LINES $(wc -l </tmp/dmesg)"
        # What the guest sees of the CPU: its flags, and the mitigations
        # it chose from them (some cost an MSR write per switch).
        echo "@@L2 CPU_FLAGS $(grep -m 1 '^flags' /proc/cpuinfo | cut -d: -f2)"
        for v in /sys/devices/system/cpu/vulnerabilities/*; do
            [ -f "$v" ] && echo "@@L2 VULN ${v##*/} $(cat "$v")"
        done
    else
        echo "@@L2 HOLD"
        sleep 1.5
    fi
    echo "@@L2 REBOOT"
    reboot -f
    echo "@@L2 REBOOT_FAILED"
    sleep 10
    ;;
api-bench)
    # Ticks until L1 kills the VMM.
    echo "@@L2 BOOT_ID $(cat /proc/sys/kernel/random/boot_id)"
    n=0
    while :; do
        n=$((n + 1))
        echo "@@L2 TICK $n"
        sleep 0.05
    done
    ;;
virtio-bench)
    # The virtio benchmark's rows (crate::vbench_scripts::ROWS), then the
    # reset that ends every VMM, Firecracker included.
    sz_load virtio_mmio virtio_blk virtio_net
    sz_wait /dev/vda
    sz_wait /sys/class/net/eth0
    ip addr add 169.254.0.2/16 dev eth0
    ip link set eth0 up
    ping -c 1 -W 5 169.254.0.1 >/dev/null
    echo "@@L2 BENCH seq-write $(lab-peer seq write /dev/vda $SZ_BENCH_BYTES 2>&1)"
    echo "@@L2 BENCH seq-read $(lab-peer seq read /dev/vda $SZ_BENCH_BYTES 2>&1)"
    for rw in read write; do
        for qd in 1 16; do
            echo "@@L2 BENCH rand-$rw-qd$qd $(lab-peer rand $rw /dev/vda 3 --qd $qd 2>&1)"
        done
    done
    echo "@@L2 BENCH tcp-g2h $(lab-peer connect tcp:169.254.0.1:9000 --retry 10 --bytes $SZ_BENCH_TCP_BYTES </dev/zero 2>&1 >/dev/null)"
    echo "@@L2 BENCH tcp-h2g $(lab-peer connect tcp:169.254.0.1:9001 --retry 10 </dev/null 2>&1 >/dev/null)"
    echo "@@L2 REBOOT"
    reboot -f
    echo "@@L2 REBOOT_FAILED"
    sleep 10
    ;;
jail)
    # As block, then hold a few seconds while L1 inspects the jailed VMM.
    sz_load virtio_mmio virtio_blk
    sz_wait /dev/vda
    mkdir -p /mnt
    sz_try MOUNT mount -t ext4 /dev/vda /mnt
    echo "@@L2 KNOWN_SHA256 $(sz_sha < /mnt/known.bin)"
    sz_try WRITE sh -c "lab-peer gen $SZ_WRITTEN_FILE > /mnt/written.bin && sync"
    echo "@@L2 JAIL_HOLD"
    sleep 10
    sz_try UMOUNT umount /mnt
    ;;
soak-cycle)
    # One of the soak's back-to-back VMs: touch every device, power off.
    sz_load virtio_mmio virtio_blk virtio_net vmw_vsock_virtio_transport virtio_rng
    sz_wait /dev/vda
    sz_wait /sys/class/net/eth0
    sz_wait /dev/vsock
    blk=$(dd if=/dev/vda bs=4096 count=1 2>/dev/null | sz_sha | cut -c1-16)
    rng=$(head -c 64 /dev/hwrng | wc -c)
    echo "@@L2 CYCLE blk=$blk mac=$(cat /sys/class/net/eth0/address) vsock=$([ -c /dev/vsock ] && echo yes) rng=$rng"
    ;;
soak)
    # The soak's long VM: disk, TCP, vsock (both ways) and rng in loops
    # for $sz_soak_secs seconds.
    sz_load virtio_mmio virtio_blk virtio_net vmw_vsock_virtio_transport virtio_rng
    sz_wait /dev/vda
    sz_wait /sys/class/net/eth0
    sz_wait /dev/vsock
    ip addr add 169.254.0.2/16 dev eth0
    ip link set eth0 up
    mkdir -p /mnt
    sz_try MOUNT mount -t ext4 /dev/vda /mnt
    end=$(($(cut -d. -f1 /proc/uptime) + ${sz_soak_secs:-180}))
    sz_more() { [ "$(cut -d. -f1 /proc/uptime)" -lt $end ]; }
    want_tcp=$(lab-peer gen 2001 4194304 | sz_sha)
    want_vs_g=$(lab-peer gen 2003 1048576 | sz_sha)
    want_vs_l=$(lab-peer gen 2005 1048576 | sz_sha)
    (
        n=0 ok=0
        while sz_more; do
            n=$((n + 1))
            h=$(lab-peer gen 2002 4194304 | lab-peer connect tcp:169.254.0.1:9100 --retry 20 2>/dev/null | sz_sha)
            [ "$h" = "$want_tcp" ] && ok=$((ok + 1))
        done
        echo "@@L2 SOAK_TCP $ok/$n"
    ) &
    (
        n=0 ok=0
        while sz_more; do
            n=$((n + 1))
            h=$(lab-peer gen 2004 1048576 | lab-peer connect vsock:2:5001 --retry 20 2>/dev/null | sz_sha)
            [ "$h" = "$want_vs_g" ] && ok=$((ok + 1))
        done
        echo "@@L2 SOAK_VSOCK_OUT $ok/$n"
    ) &
    (
        n=0 ok=0
        while sz_more; do
            n=$((n + 1))
            h=$(lab-peer gen 2006 1048576 | lab-peer listen vsock:5000 --timeout 20 2>/dev/null | sz_sha)
            [ "$h" = "$want_vs_l" ] && ok=$((ok + 1))
        done
        echo "@@L2 SOAK_VSOCK_IN $ok/$n"
    ) &
    echo "@@L2 SOAK_READY"
    n=0 ok=0 rng=0
    while sz_more; do
        n=$((n + 1))
        lab-peer gen $n 4194304 >/mnt/soak.bin
        sync
        echo 3 >/proc/sys/vm/drop_caches
        [ "$(sz_sha </mnt/soak.bin)" = "$(lab-peer gen $n 4194304 | sz_sha)" ] && ok=$((ok + 1))
        dd if=/mnt/soak.bin of=/dev/null bs=1M 2>/dev/null
        lab-peer seq read /dev/vda 8M >/dev/null 2>&1
        rng=$((rng + $(head -c 4096 /dev/hwrng | wc -c)))
    done
    echo "@@L2 SOAK_DISK $ok/$n"
    echo "@@L2 SOAK_LAST_SEED $n"
    echo "@@L2 SOAK_RNG_BYTES $rng"
    wait
    sz_try UMOUNT umount /mnt
    ;;
*)
    echo "@@L2 UNKNOWN_SCENARIO [$sz_scenario]"
    ;;
esac
echo "@@L2 POWEROFF"
poweroff -f
echo "@@L2 POWEROFF_FAILED"
sleep 10
"#;

/// The rootfs scenario's initramfs /init: loads the virtio block stack
/// (the Debian kernel has virtio_blk as a module, so it cannot mount
/// `root=/dev/vda` by itself), mounts the `root=` device and
/// `switch_root`s to its /sbin/init ([`ROOTFS_INIT`]). `modules`: module
/// files in insmod order.
pub fn rootfs_initrd_init(modules: &[String]) -> String {
    format!(
        "#!/bin/sh\nSZ_MODULES={}\n{}",
        sh_quote(&modules.join(" ")),
        r#"bb=/bin/busybox
$bb mkdir -p /proc /sys /dev /newroot
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
echo "@@L2 INIT scenario=$sz_scenario (initramfs)"
for m in $SZ_MODULES; do
    out=$($bb insmod /lib/modules/$m.ko 2>&1) || echo "@@L2 INSMOD_FAILED $m: $out"
done
root=
for w in $($bb cat /proc/cmdline); do
    case $w in root=*) root=${w#root=} ;; esac
done
n=0
while [ ! -b "$root" ] && [ $n -lt 50 ]; do $bb sleep 0.1; n=$((n + 1)); done
if ! out=$($bb mount -t ext4 -o rw "$root" /newroot 2>&1); then
    echo "@@L2 ROOT_MOUNT_FAILED root=$root: $out"
    $bb poweroff -f
fi
$bb umount /proc /sys
$bb mount --move /dev /newroot/dev
echo "@@L2 SWITCH_ROOT $root"
exec $bb switch_root /newroot /sbin/init
echo "@@L2 SWITCH_ROOT_FAILED"
$bb poweroff -f
"#
    )
}

/// `/sbin/init` on the rootfs scenario's disk: proves it runs from the disk
/// (what is mounted on /, a file only the disk has, the initramfs' /init
/// gone), writes a file L1 reads back, and powers off cleanly.
pub const ROOTFS_INIT: &str = r#"#!/bin/sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
echo "@@L2 ROOTFS_INIT pid=$$"
echo "@@L2 ROOT_MOUNT $(awk '$2 == "/" { m = $1 " " $3 " " substr($4, 1, 2) } END { print m }' /proc/mounts)"
echo "@@L2 DISK_MARKER $(cat /etc/sz-rootfs-marker)"
if [ -e /init ]; then echo "@@L2 INITRAMFS_INIT present"; else echo "@@L2 INITRAMFS_INIT absent"; fi
echo "rootfs-write $(cat /etc/sz-rootfs-marker)" >/etc/sz-written
sync
if out=$(mount -o remount,ro / 2>&1); then echo "@@L2 REMOUNT_RO ok"; else echo "@@L2 REMOUNT_RO failed: $out"; fi
echo "@@L2 POWEROFF"
poweroff -f
"#;
