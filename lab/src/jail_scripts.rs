//! The `jail` and `soak` scenarios' L1 drivers ([`crate::scripts::Scenario::driver`]).
//!
//! - `jail` ([`JAIL_DRIVER`]): `subzero jail --uid 1000 --gid 1000
//!   --chroot-base /srv/jail -- run ... --disk path=/data/jail.img`. L1's
//!   root is its initramfs, which `pivot_root(2)` refuses, so the jail runs
//!   chrooted into a tmpfs ([`JAIL_ROOT`]) holding busybox, subzero, the L2
//!   kernel and initramfs, with `/data` a second tmpfs: the kernel and
//!   initramfs are hard-linked into the jail, the disk is bind-mounted.
//!   While the guest holds (it has read the disk and written a file, then
//!   sleeps), L1 reads the jailed VMM's `/proc/PID/status`, `limits`,
//!   `cgroup`, `mountinfo`, `ns/*` and lists `/proc/PID/root/`; after it,
//!   L1 checks the image (loop mount).
//! - `soak` ([`SOAK_DRIVER`], opt-in: about 13 minutes in L1): first
//!   `SUBZERO_LAB_SOAK_VMS` (50) VMs back to back, each with a disk, a net
//!   device on the TAP, vsock and rng, whose guest touches each device and
//!   powers off; then one VM for `SUBZERO_LAB_SOAK_SECS` (180) whose guest
//!   loops over the disk (4 MiB files written, synced, read back after
//!   dropping caches, O_DIRECT reads of the raw device), TCP to L1, vsock
//!   streams both ways and the rng, while L1 samples the VMM's open fds
//!   and RSS every `SUBZERO_LAB_SOAK_SAMPLE` (5) seconds. `e2fsck -fn`
//!   and the known file's sha256 check the image after each part.
//!
//! The soak keeps L1 busy with nested guests for about 13 minutes, and
//! L1 as a whole froze (QEMU's vCPU thread asleep, using no CPU; L1's
//! console silent) in 3 of the 7 L1 boots that ran it while it was
//! written: once during the 50 short VMs and twice during the driven one.
//! The lab then boots one new L1 for it; a second freeze fails the test
//! with "L1 did not finish its scenarios". The other scenarios in those
//! L1s had passed. A frozen L1 cannot be inspected, so whether a guest,
//! L1's KVM or QEMU's TCG is to blame is not known.
//!
//! Output: `@@L1 CHECK jail <KEY> <value>` facts; for the soak one
//! `@@L1 CHECK soak CYCLE <n> rc=<rc> secs=<s> <the guest's CYCLE line>` per
//! VM and `@@L1 CHECK soak SAMPLE t=<s> fds=<n> rss_kb=<n> guest_kb=<n>
//! threads=<n>` per sample (`guest_kb`: the resident part of guest RAM,
//! mappings of 64 MiB or more in `/proc/PID/smaps`).

/// The tmpfs L1 chroots into for the jail scenario.
pub const JAIL_ROOT: &str = "/tmp/jroot";
/// The jail's id, so its root is `<JAIL_ROOT>/srv/jail/subzero/jail0/root`.
pub const JAIL_ID: &str = "jail0";
/// The uid and gid the jailed VMM runs as.
pub const JAIL_UID: u32 = 1000;
/// The cgroup limit the jail scenario sets.
pub const JAIL_PIDS_MAX: u32 = 64;
/// The jail scenario's rlimits: RLIMIT_FSIZE and RLIMIT_NOFILE.
pub const JAIL_FSIZE: u64 = 1 << 30;
/// See [`JAIL_FSIZE`].
pub const JAIL_NOFILE: u64 = 512;

/// L1 before the jail driver: the tmpfs root and what goes in it.
pub const JAIL_BEFORE: &str = r#"J=/tmp/jroot
mkdir -p $J
mount -t tmpfs -o size=256m tmpfs $J
mkdir -p $J/bin $J/l2 $J/srv/jail $J/data $J/proc $J/sys $J/dev $J/tmp
cp /bin/busybox /bin/subzero $J/bin/
cp /l2/bzImage /l2/initrd.cpio.gz $J/l2/
mount -t tmpfs -o size=64m tmpfs $J/data
cp /l2/block.img $J/data/jail.img
chown 1000:1000 $J/data/jail.img
mount -t proc proc $J/proc
mount -t sysfs sysfs $J/sys
mount -t devtmpfs devtmpfs $J/dev
mount -t cgroup2 cgroup2 $J/sys/fs/cgroup
"#;

/// L1 after the jail driver: the image, what the jail left, unmounts.
pub const JAIL_AFTER: &str = r#"sz_reap
J=/tmp/jroot
sz_inspect $J/data/jail.img WRITTEN_SHA256 'sha256sum < written.bin | cut -d" " -f1'
sz_check JAIL_LEFT "$(ls $J/srv/jail/subzero/jail0/root | tr '\n' ' ')"
sz_check CGROUP_LEFT "$(ls -d $J/sys/fs/cgroup/subzero/jail0 2>/dev/null)"
umount $J/sys/fs/cgroup $J/sys $J/proc $J/dev $J/data
umount $J
"#;

/// The jail scenario's driver (see the module docs).
pub const JAIL_DRIVER: &str = r#"J=/tmp/jroot
OUT=/tmp/jail.out
rm -f $OUT $OUT.err
sz_step "subzero jail, chrooted into a tmpfs"
RUST_LOG=subzero::jail=info chroot $J /bin/subzero jail --id jail0 --uid 1000 --gid 1000 \
    --chroot-base /srv/jail --cgroup pids.max=64 --rlimit fsize=1G,no-file=512 -- \
    run --kernel /l2/bzImage --initrd /l2/initrd.cpio.gz --cmdline "$SZ_CMDLINE" \
    --memory ${SZ_MEM_MIB}M --disk path=/data/jail.img </dev/null >$OUT 2>$OUT.err &
jpid=$!
sz_track $jpid
if sz_wait_for $OUT '@@L2 JAIL_HOLD' 120; then
    # The VMM is the jail's child (L1's busybox has no pgrep).
    pid=
    for p in /proc/[0-9]*; do
        [ "$(awk '/^PPid:/ { print $2 }' $p/status 2>/dev/null)" = "$jpid" ] && pid=${p#/proc/}
    done
    sz_check VMM_PID "$pid"
    sz_check VMM_CMD "$(tr '\0' ' ' </proc/$pid/cmdline)"
    for k in Uid Gid Groups CapInh CapPrm CapEff CapBnd CapAmb NoNewPrivs NSpid Seccomp; do
        sz_check "STATUS_$k" "$(awk -v k="$k:" '$1 == k { $1 = ""; print }' /proc/$pid/status)"
    done
    sz_check THREADS_SECCOMP "$(for t in /proc/$pid/task/*; do printf '%s=%s ' "$(cat $t/comm)" "$(awk '/^Seccomp:/ { print $2 }' $t/status)"; done)"
    sz_check ROOT_LS "$(ls -a /proc/$pid/root/ | tr '\n' ' ')"
    sz_check ROOT_DEV "$(cd /proc/$pid/root/dev && find . | sort | tr '\n' ' ')"
    sz_check HOST_PATHS_SEEN "$(for p in /bin /l2 /srv /data /proc /sys /tmp /init /etc /home; do [ -e /proc/$pid/root$p ] && printf '%s ' $p; done)"
    sz_check HOST_PATHS_IN_CHROOT "$(for p in /bin /l2 /srv /data /proc /sys /tmp; do [ -e $J$p ] && printf '%s ' $p; done)"
    sz_check MOUNTS "$(awk '{ print $5 }' /proc/$pid/mountinfo | sort | tr '\n' ' ')"
    sz_check NS_NEW "$(for n in mnt pid ipc; do [ "$(readlink /proc/$pid/ns/$n)" != "$(readlink /proc/$$/ns/$n)" ] && printf '%s ' $n; done)"
    sz_check CGROUP "$(cat /proc/$pid/cgroup)"
    sz_check PIDS_MAX "$(cat $J/sys/fs/cgroup/subzero/jail0/pids.max)"
    sz_check LIMIT_FSIZE "$(awk '/^Max file size/ { print $4, $5 }' /proc/$pid/limits)"
    sz_check LIMIT_NOFILE "$(awk '/^Max open files/ { print $4, $5 }' /proc/$pid/limits)"
    sz_check ROOT_OWNERS "$(ls -ln /proc/$pid/root/ | awk 'NR > 1 { print $3 ":" $4, $9 }' | tr '\n' ',')"
else
    sz_check FAILED "the jailed guest never reached JAIL_HOLD"
fi
wait $jpid
rc=$?
sz_check JAIL_RC "$rc"
sz_console 1 $OUT
exit $rc
"#;

/// L1 before the soak driver: the disk image and the TAP.
pub const SOAK_BEFORE: &str = r#"cp /l2/block.img /tmp/soak.img
tunctl -t sztap0 >/dev/null
ip addr add 169.254.0.1/16 dev sztap0
ip link set sztap0 up
"#;

/// L1 after the soak driver.
pub const SOAK_AFTER: &str = r#"sz_reap
rm -f /tmp/soak.img /tmp/soak.*.rx /tmp/soak.out* /tmp/soak.cycle.*
tunctl -d sztap0 >/dev/null
"#;

/// The soak's payloads: `lab-peer gen SEED BYTES` (both ends compute the
/// expected sha256 themselves): TCP down/up, vsock guest->L1 connection
/// (L1's/guest's stream), vsock L1->guest connection (L1's/guest's).
pub const SOAK_PAYLOADS: &[(u64, u64)] = &[
    (2001, 4 << 20),
    (2002, 4 << 20),
    (2003, 1 << 20),
    (2004, 1 << 20),
    (2005, 1 << 20),
    (2006, 1 << 20),
];

/// The soak driver (see the module docs). `/l2/soak.env` sets
/// `SZ_SOAK_VMS`, `SZ_SOAK_SECS` and `SZ_SOAK_SAMPLE`.
pub const SOAK_DRIVER: &str = r#". /l2/soak.env
IMG=/tmp/soak.img
UDS=/tmp/soak.vsock
DEVS="--disk path=$IMG --net tap=sztap0,mac=52:54:00:12:34:56 --vsock cid=3,uds=$UDS --rng"
BASE="console=ttyS0 quiet panic=-1"
up() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(up)" 'BEGIN { printf "%.1f", b - a }'; }
sha() { sha256sum | cut -d' ' -f1; }
# fsck_image WHEN: e2fsck -fn and the known file's sha256.
fsck_image() {
    e2fsck -fn $IMG >/tmp/soak.fsck 2>&1
    sz_check "FSCK_$1" "rc=$? $(tail -n 1 /tmp/soak.fsck)"
    mkdir -p /tmp/soak.mnt
    mount -t ext4 -o loop,ro $IMG /tmp/soak.mnt
    sz_check "KNOWN_$1" "$(sha </tmp/soak.mnt/known.bin)"
    [ -e /tmp/soak.mnt/soak.bin ] && sz_check "LAST_$1" "$(sha </tmp/soak.mnt/soak.bin)"
    umount /tmp/soak.mnt
}

sz_step "$SZ_SOAK_VMS VMs back to back, each with disk, net, vsock and rng"
t_all=$(up)
i=1
while [ $i -le $SZ_SOAK_VMS ]; do
    t0=$(up)
    timeout -s KILL 120 /bin/subzero run --kernel $SZ_KERNEL --initrd $SZ_INITRD \
        --cmdline "$BASE sz_scenario=soak-cycle" --memory ${SZ_MEM_MIB}M $DEVS \
        </dev/null >/tmp/soak.cycle.out 2>/tmp/soak.cycle.err
    rc=$?
    line=$(grep -o '@@L2 CYCLE .*' /tmp/soak.cycle.out | head -n 1 | tr -d '\r')
    stale=
    [ -e $UDS ] && stale=" stale-uds"
    sz_check CYCLE "$i rc=$rc secs=$(since $t0)$stale $line"
    if [ $rc != 0 ] || [ -z "$line" ]; then
        cp /tmp/soak.cycle.out /tmp/soak.cycle.$i
        cp /tmp/soak.cycle.err /tmp/soak.cycle.$i.err
        sz_console $i /tmp/soak.cycle.$i
    fi
    i=$((i + 1))
done
sz_check CYCLES_SECS "$(since $t_all)"
fsck_image CYCLES

sz_step "one VM driven for $SZ_SOAK_SECS s"
rm -f /tmp/soak.stop /tmp/soak.*.log
want_up=$(lab-peer gen 2002 4194304 | sha)
want_vs_g=$(lab-peer gen 2004 1048576 | sha)
want_vs_l=$(lab-peer gen 2006 1048576 | sha)
# L1's ends: a TCP server, a listener for the guest's vsock connections,
# and a client of the guest's vsock listener; each loops and logs ok/bad.
(
    while [ ! -e /tmp/soak.stop ]; do
        lab-peer gen 2001 4194304 | lab-peer listen tcp:169.254.0.1:9100 --timeout 30 >/tmp/soak.tcp.rx 2>/dev/null || continue
        [ "$(sha </tmp/soak.tcp.rx)" = "$want_up" ] && echo ok >>/tmp/soak.tcp.log || echo bad >>/tmp/soak.tcp.log
    done
) &
sz_track $!
(
    while [ ! -e /tmp/soak.stop ]; do
        lab-peer gen 2003 1048576 | lab-peer listen unix:${UDS}_5001 --timeout 30 >/tmp/soak.vsg.rx 2>/dev/null || continue
        [ "$(sha </tmp/soak.vsg.rx)" = "$want_vs_g" ] && echo ok >>/tmp/soak.vsg.log || echo bad >>/tmp/soak.vsg.log
    done
) &
sz_track $!
t0=$(up)
timeout -s KILL $((SZ_SOAK_SECS + 400)) /bin/subzero run --kernel $SZ_KERNEL --initrd $SZ_INITRD \
    --cmdline "$BASE sz_scenario=soak sz_soak_secs=$SZ_SOAK_SECS" --memory ${SZ_MEM_MIB}M $DEVS \
    </dev/null >/tmp/soak.out 2>/tmp/soak.out.err &
vm=$!
sz_track $vm
(
    sleep 5
    while [ ! -e /tmp/soak.stop ]; do
        lab-peer gen 2005 1048576 | lab-peer connect vsock-uds:$UDS:5000 --retry 20 >/tmp/soak.vsl.rx 2>/dev/null || { sleep 1; continue; }
        [ "$(sha </tmp/soak.vsl.rx)" = "$want_vs_l" ] && echo ok >>/tmp/soak.vsl.log || echo bad >>/tmp/soak.vsl.log
    done
) &
sz_track $!
sz_wait_for /tmp/soak.out '@@L2 SOAK_READY' 180 || sz_check FAILED "the soak guest never printed SOAK_READY"
sz_check READY_AT "$(since $t0)"
while sz_alive $vm; do
    fds=$(ls /proc/$vm/fd 2>/dev/null | wc -l)
    rss=$(awk '/^VmRSS:/ { print $2 }' /proc/$vm/status 2>/dev/null)
    thr=$(awk '/^Threads:/ { print $2 }' /proc/$vm/status 2>/dev/null)
    gkb=$(awk '/^Size:/ { s = $2 } /^Rss:/ { if (s >= 65536) g += $2 } END { print g + 0 }' /proc/$vm/smaps 2>/dev/null)
    [ -n "$rss" ] && sz_check SAMPLE "t=$(since $t0) fds=$fds rss_kb=$rss guest_kb=$gkb threads=$thr"
    sleep $SZ_SOAK_SAMPLE
done
wait $vm
rc=$?
touch /tmp/soak.stop
sz_check SOAK_RC "$rc"
sz_check SOAK_SECS_RUN "$(since $t0)"
sleep 2
for l in tcp vsg vsl; do
    sz_check "L1_$l" "ok=$(grep -c ok /tmp/soak.$l.log 2>/dev/null) bad=$(grep -c bad /tmp/soak.$l.log 2>/dev/null)"
done
fsck_image SOAK
sz_console soak /tmp/soak.out
exit $rc
"#;

/// `/l2/soak.env` from `SUBZERO_LAB_SOAK_VMS`, `SUBZERO_LAB_SOAK_SECS` and
/// `SUBZERO_LAB_SOAK_SAMPLE` (defaults 50, 180 and 5).
pub fn soak_env() -> String {
    let knob = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    format!(
        "SZ_SOAK_VMS={}\nSZ_SOAK_SECS={}\nSZ_SOAK_SAMPLE={}\n",
        knob("SUBZERO_LAB_SOAK_VMS", 50),
        knob("SUBZERO_LAB_SOAK_SECS", 180),
        knob("SUBZERO_LAB_SOAK_SAMPLE", 5).max(1),
    )
}

/// What L1 carries for the soak: `/l2/soak.env` and the host's e2fsck with
/// its libraries.
pub(crate) fn soak_assets() -> Result<Vec<(String, Vec<u8>, u32)>, crate::LabError> {
    let mut files = crate::binaries::e2fsck_files()?;
    files.push(("/l2/soak.env".into(), soak_env().into_bytes(), 0o644));
    Ok(files)
}

/// One `SAMPLE` check: (seconds since the VM started, fds, VmRSS kB, guest
/// RAM resident kB, threads).
pub fn parse_sample(v: &str) -> Option<(f64, u64, u64, u64, u64)> {
    let field = |k: &str| {
        v.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
    };
    Some((
        field("t")?.parse().ok()?,
        field("fds")?.parse().ok()?,
        field("rss_kb")?.parse().ok()?,
        field("guest_kb")?.parse().ok()?,
        field("threads")?.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse() {
        let s = parse_sample("t=12.5 fds=17 rss_kb=81234 guest_kb=70000 threads=9").unwrap();
        assert_eq!(s, (12.5, 17, 81234, 70000, 9));
        assert_eq!(parse_sample("t=1 fds=x"), None);
    }

    #[test]
    fn both_ends_of_the_soak_use_the_same_payloads() {
        let guest = crate::l2_scripts::L2_INIT_BODY;
        for (seed, bytes) in SOAK_PAYLOADS {
            let gen = format!("lab-peer gen {seed} {bytes}");
            assert!(
                SOAK_DRIVER.contains(&gen) || guest.contains(&gen),
                "{gen} is in neither script"
            );
        }
        assert!(soak_env().contains("SZ_SOAK_SECS="));
    }
}
