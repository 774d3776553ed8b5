//! The `virtio-bench` scenario (opt-in): disk and network throughput of
//! subzero and its peers in one L1, on the same guest, disk image and TAP.
//!
//! Its L1 driver ([`VIRTIO_BENCH_DRIVER`], run like the API drivers, see
//! [`crate::api_scripts::driver_file`]) boots the lab's Debian bzImage and
//! L2 initramfs with [`VCPUS`] vCPUs, [`MEMORY_MIB`] MiB and one command
//! line (`console=ttyS0 quiet panic=-1 sz_scenario=virtio-bench reboot=k`),
//! with a virtio-blk disk on [`IMAGE`] (raw, [`crate::scripts::BENCH_BYTES`],
//! made anew and sparse before every boot) and a virtio-net device on the
//! TAP `sztap0` (MAC [`MAC`]), under each of [`VMMS`] that L1 has:
//! - `subzero-sync`, `subzero-uring`: `subzero run` with `--disk
//!   path=/tmp/bench.img,engine=sync` (or `engine=uring`) and `--net
//!   tap=sztap0,mac=...`. A subzero that does not know `engine=` refuses
//!   the flag: those boots fail, with subzero's first stderr line;
//! - `firecracker`: `/usr/bin/firecracker --no-api --no-seccomp
//!   --config-file vm.json --level Warning` with one drive (not the root
//!   device, read-write) and one network interface on the TAP, when the lab
//!   copied the peer into L1 (see `SUBZERO_LAB_FIRECRACKER`); otherwise it
//!   is skipped and `@@L1 CHECK virtio-bench FIRECRACKER skipped: ...` says
//!   so. Firecracker exits only when the guest resets through the i8042:
//!   hence `reboot=k` and the guest's `reboot -f`, for every VMM;
//! - `qemu-microvm`: `qemu-system-x86_64 -M microvm,acpi=on` with
//!   `virtio-blk-device` and `virtio-net-device` (a TAP netdev), as
//!   `boot-bench` runs it: SeaBIOS's `bios-microvm.bin`, `-no-reboot`, and
//!   `-device i8042` for the guest's reset ([`crate::boot_scripts`]).
//!
//! Before every boot L1 also starts the TCP peers on the TAP's
//! 169.254.0.1: a sink on port 9000 and a source of
//! [`crate::scripts::BENCH_TCP_BYTES`] zeros on port 9001 (`lab-peer listen`,
//! one connection each); they are stopped after the boot.
//!
//! The warm-up boots, which are not timed, count exits: each runs under
//! `perf kvm stat record` when L1 has perf (`@@L1 CHECK virtio-bench PERF`,
//! or `PERF_UNAVAILABLE`), and its `perf kvm stat report --event=vmexit`
//! follows as `@@L1 VB_PERF <seq> <line>`; a subzero warm-up also runs with
//! `--stats --no-trace`, its report as `@@L1 VB_STATS <seq> <line>`. See
//! [`crate::vbench_facts::reports`].
//!
//! Protocol: one warm-up boot of each VMM, then [`ROUNDS`] timed rounds in
//! which every VMM boots once, the order rotating by one each round (as in
//! `boot-bench`). `SUBZERO_LAB_VBENCH_ROUNDS=N` runs N rounds instead (a
//! shorter run while working on the lab; `/l2/vbench.env` carries it).
//! Every boot runs all of [`ROWS`] in the guest (see the L2 init's
//! `virtio-bench` case), each printed as `@@L2 BENCH <row> <lab-peer's
//! summary line>`, then `@@L2 REBOOT` and `reboot -f`. A boot is printed
//! between `@@L1 VB_BOOT <seq> <vmm> <phase> start` and `@@L1 VB_BOOT
//! <seq> <vmm> <phase> end rc=<rc> how=<exited|timeout|killed-after-reboot>`
//! (phase `warmup`, `round1`, ...), its console copied to L1's line by line.
//! A failed boot's first stderr line is `@@L1 CHECK virtio-bench BOOT_ERR
//! <seq> <line>`, and its stderr (up to 20 lines) goes to the driver's
//! stderr prefixed `boot <seq> (<vmm>): `. See [`crate::vbench_facts`].

/// The VMMs, in the warm-up's order (those L1 lacks are left out).
pub const VMMS: &[&str] = &[
    "subzero-sync",
    "subzero-uring",
    "firecracker",
    "qemu-microvm",
];

/// The subzero variants: (VMM, the `--disk` value's `engine=`).
pub const SUBZERO_ENGINES: &[(&str, &str)] =
    &[("subzero-sync", "sync"), ("subzero-uring", "uring")];

/// The rows every boot runs, in the guest's order: (key in `@@L2 BENCH
/// <key>`, what it measures, unit).
pub const ROWS: &[(&str, &str, &str)] = &[
    ("seq-write", "sequential write, 1 MiB", "MiB/s"),
    ("seq-read", "sequential read, 1 MiB", "MiB/s"),
    ("rand-read-qd1", "random read 4 KiB, qd 1", "IOPS"),
    ("rand-read-qd16", "random read 4 KiB, qd 16", "IOPS"),
    ("rand-write-qd1", "random write 4 KiB, qd 1", "IOPS"),
    ("rand-write-qd16", "random write 4 KiB, qd 16", "IOPS"),
    ("tcp-g2h", "TCP guest -> L1", "MiB/s"),
    ("tcp-h2g", "TCP L1 -> guest", "MiB/s"),
];

/// Seconds each random-I/O row runs.
pub const RAND_SECS: u32 = 3;

/// The disk image in L1, for every VMM.
pub const IMAGE: &str = "/tmp/bench.img";
/// The guest's MAC address, for every VMM.
pub const MAC: &str = "52:54:00:12:34:56";

/// Timed rounds after the warm-up.
pub const ROUNDS: u32 = 3;

/// The guest's vCPUs and memory, for every VMM.
pub const VCPUS: u32 = 2;
/// See [`VCPUS`].
pub const MEMORY_MIB: u32 = 256;

/// Seconds each boot may run before it is killed: a boot and its rows take
/// 30 to 70 s. Well under the lab's [`crate::STALL`], so a guest that hangs
/// is killed (and reported, `how=timeout`) before a silent console makes
/// the lab take L1 for frozen.
pub const BOOT_TIMEOUT_SECS: u64 = 110;
const _: () = assert!(BOOT_TIMEOUT_SECS + 20 < crate::STALL.as_secs());

/// Seconds a VMM may keep running after its guest printed `@@L2 REBOOT`.
pub const REBOOT_GRACE_SECS: u64 = 10;

/// The boots of a full run: warm-up and rounds for every VMM.
pub const MAX_BOOTS: u64 = (1 + ROUNDS as u64) * VMMS.len() as u64;

/// The scenario's timeout: about 80 s a boot (a boot and its rows took
/// 30 to 50 s in L1). A driver that runs out of time is killed; the boots
/// it finished are still reported.
pub const TIMEOUT_SECS: u64 = MAX_BOOTS * 80;

/// The rounds for L1 (`ROUNDS="1 2 3"`) from `SUBZERO_LAB_VBENCH_ROUNDS`
/// (default [`ROUNDS`]), as the file `/l2/vbench.env`.
pub(crate) fn vbench_assets() -> Result<Vec<(String, Vec<u8>, u32)>, crate::LabError> {
    let rounds = match std::env::var("SUBZERO_LAB_VBENCH_ROUNDS") {
        Ok(v) if !v.is_empty() => {
            v.parse()
                .ok()
                .filter(|n| (1..=20).contains(n))
                .ok_or_else(|| {
                    crate::LabError::Failed(format!(
                        "SUBZERO_LAB_VBENCH_ROUNDS={v:?}: a number of rounds from 1 to 20"
                    ))
                })?
        }
        _ => ROUNDS,
    };
    // Extra `--disk` keys for the subzero boots (e.g. `queues=1`), to
    // compare settings in one run.
    let disk = std::env::var("SUBZERO_LAB_VBENCH_DISK").unwrap_or_default();
    if !disk
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"=,_".contains(&b))
    {
        return Err(crate::LabError::Failed(format!(
            "SUBZERO_LAB_VBENCH_DISK={disk:?}: only --disk keys and values, e.g. queues=1"
        )));
    }
    let vmms = match std::env::var("SUBZERO_LAB_VBENCH_VMMS") {
        Ok(v) if !v.trim().is_empty() => vmm_list(&v).map_err(crate::LabError::Failed)?,
        _ => VMMS.join(" "),
    };
    let env = format!(
        "{}SZ_DISK_EXTRA=\"{disk}\"\nSZ_VMMS=\"{vmms}\"\n",
        rounds_env(rounds)
    );
    Ok(vec![("/l2/vbench.env".into(), env.into_bytes(), 0o644)])
}

/// The VMMs of `SUBZERO_LAB_VBENCH_VMMS`, checked: `firecracker`,
/// `qemu-microvm`, and subzero variants
/// `subzero-<engine>[-q<N>][-nosec][-normal]` (engine `sync`, `uring` or
/// `auto`; N request queues, 1 to 16; `-nosec` runs it with
/// `--no-seccomp`, as the lab runs Firecracker; `-normal` with
/// `--device-sched normal`), e.g.
/// `subzero-uring subzero-uring-q1 firecracker` for an A/B of the queue
/// count against one peer.
pub fn vmm_list(v: &str) -> Result<String, String> {
    let bad = |w: &str| {
        format!(
            "SUBZERO_LAB_VBENCH_VMMS: {w:?} is not a VMM here: firecracker, qemu-microvm, \
             or subzero-<sync|uring|auto>[-q<1-16>][-nosec][-normal], e.g. subzero-uring-q1"
        )
    };
    let mut out: Vec<&str> = Vec::new();
    for w in v.split_whitespace() {
        let ok = match w.strip_prefix("subzero-") {
            None => w == "firecracker" || w == "qemu-microvm",
            Some(rest) => {
                // The flags in this order (the driver strips them so).
                let rest = rest.strip_suffix("-normal").unwrap_or(rest);
                let rest = rest.strip_suffix("-nosec").unwrap_or(rest);
                let (engine, queues) = match rest.split_once("-q") {
                    Some((e, q)) => (e, Some(q)),
                    None => (rest, None),
                };
                ["sync", "uring", "auto"].contains(&engine)
                    && queues.is_none_or(|q| {
                        !q.starts_with('0') && q.parse::<u32>().is_ok_and(|n| (1..=16).contains(&n))
                    })
            }
        };
        if !ok {
            return Err(bad(w));
        }
        if out.contains(&w) {
            return Err(format!("SUBZERO_LAB_VBENCH_VMMS: {w} is listed twice"));
        }
        out.push(w);
    }
    Ok(out.join(" "))
}

fn rounds_env(rounds: u32) -> String {
    let list: Vec<String> = (1..=rounds).map(|r| r.to_string()).collect();
    format!("ROUNDS=\"{}\"\n", list.join(" "))
}

/// The driver. Variables from [`crate::api_scripts::driver_file`]:
/// `SZ_KERNEL`, `SZ_INITRD`, `SZ_CMDLINE`, `SZ_MEM_MIB`, `SZ_VCPUS`,
/// `SZ_BENCH_BYTES`, `SZ_BENCH_TCP_BYTES`.
pub const VIRTIO_BENCH_DRIVER: &str = r#"FC=/usr/bin/firecracker
QEMU=/usr/bin/qemu-system-x86_64
PERF=/usr/bin/perf
BIOS=/usr/share/seabios/bios-microvm.bin
IMG=/tmp/bench.img
MAC=52:54:00:12:34:56
BOOT_SECS=110
REBOOT_GRACE=10
ROUNDS="1 2 3"
SZ_DISK_EXTRA=
B=/tmp/vb
rm -f $B.*

SZ_VMMS="subzero-sync subzero-uring firecracker qemu-microvm"
[ -r /l2/vbench.env ] && . /l2/vbench.env
if [ -x $FC ]; then
    sz_check FIRECRACKER "$($FC --version 2>&1 | head -n 1)"
else
    sz_check FIRECRACKER "skipped: not in L1 (the host has no peer Firecracker, see SUBZERO_LAB_FIRECRACKER)"
fi
if [ -x $QEMU ]; then
    sz_check QEMU "$($QEMU --version 2>&1 | head -n 1)"
else
    sz_check QEMU "skipped: not in L1"
fi
if [ -x $PERF ]; then
    sz_tracefs
    sz_check PERF "warm-up boots under perf kvm stat record"
else
    sz_check PERF_UNAVAILABLE "$PERF is not in L1: the host has no $PERF (apt-get install linux-perf)"
fi
vmms=
for v in $SZ_VMMS; do
    case $v in
    firecracker) [ -x $FC ] || continue ;;
    qemu-microvm) [ -x $QEMU ] || continue ;;
    esac
    vmms="${vmms:+$vmms }$v"
done
sz_check VMMS $vmms
sz_check ROUNDS $ROUNDS
sz_check CMDLINE "$SZ_CMDLINE"

# sz_fresh: the same sparse image and TCP peers before every boot.
sz_fresh() {
    rm -f $IMG
    dd if=/dev/zero of=$IMG bs=1M count=0 seek=64 2>/dev/null
    lab-peer listen tcp:169.254.0.1:9000 --timeout $BOOT_SECS </dev/null >/dev/null 2>$B.g2h.err &
    g2h=$!
    lab-peer listen tcp:169.254.0.1:9001 --timeout $BOOT_SECS --bytes $SZ_BENCH_TCP_BYTES </dev/zero >/dev/null 2>$B.h2g.err &
    h2g=$!
    sz_track $g2h
    sz_track $h2g
}

# sz_boot SEQ VMM PHASE: one boot of VMM between VB_BOOT start and end
# markers. A reader copies the VMM's console to L1's line by line and gives
# the VMM REBOOT_GRACE seconds after the guest's @@L2 REBOOT.
sz_boot() {
    seq=$1 vmm=$2 phase=$3
    case $vmm in
    subzero-*)
        # subzero-<engine>[-q<N>][-nosec][-normal]: the disk's engine and
        # request queues, --no-seccomp, --device-sched normal.
        v=${vmm#subzero-}
        flags=
        case $v in *-normal) v=${v%-normal} flags="$flags --device-sched normal" ;; esac
        case $v in *-nosec) v=${v%-nosec} flags="$flags --no-seccomp" ;; esac
        disk="path=$IMG,engine=${v%%-q*}"
        case $v in *-q*) disk="$disk,queues=${v##*-q}" ;; esac
        set -- /bin/subzero run --kernel "$SZ_KERNEL" --initrd "$SZ_INITRD" --cmdline "$SZ_CMDLINE" \
            --memory "${SZ_MEM_MIB}M" --vcpus "$SZ_VCPUS" \
            --disk "$disk${SZ_DISK_EXTRA:+,$SZ_DISK_EXTRA}" --net "tap=sztap0,mac=$MAC" $flags
        # The warm-up, which is not timed, also counts exits and the
        # devices' kicks and interrupts.
        [ $phase = warmup ] && set -- "$@" --stats --no-trace --stats-out $B.stats
        ;;
    firecracker)
        printf '{\n  "boot-source": {"kernel_image_path": "%s", "initrd_path": "%s", "boot_args": "%s"},\n  "machine-config": {"vcpu_count": %s, "mem_size_mib": %s},\n  "drives": [{"drive_id": "d0", "path_on_host": "%s", "is_root_device": false, "is_read_only": false}],\n  "network-interfaces": [{"iface_id": "eth0", "guest_mac": "%s", "host_dev_name": "sztap0"}]\n}\n' \
            "$SZ_KERNEL" "$SZ_INITRD" "$SZ_CMDLINE" "$SZ_VCPUS" "$SZ_MEM_MIB" "$IMG" "$MAC" >$B.fc.json
        set -- $FC --no-api --no-seccomp --config-file $B.fc.json --level Warning
        ;;
    qemu-microvm)
        set -- $QEMU -M microvm,acpi=on -enable-kvm -cpu host -nodefaults -no-user-config -display none \
            -serial stdio -no-reboot -device i8042 -bios $BIOS -kernel "$SZ_KERNEL" -initrd "$SZ_INITRD" \
            -append "$SZ_CMDLINE" -m "${SZ_MEM_MIB}M" -smp "$SZ_VCPUS" \
            -drive id=d0,file=$IMG,format=raw,if=none -device virtio-blk-device,drive=d0 \
            -netdev tap,id=n0,ifname=sztap0,script=no,downscript=no -device virtio-net-device,netdev=n0,mac=$MAC
        ;;
    esac
    # busybox timeout execs the command in its own process: $! is the VMM,
    # or perf, which counts the warm-up's exits by reason for every VMM.
    set -- timeout -s KILL $BOOT_SECS "$@"
    perfed=
    if [ $phase = warmup ] && [ -x $PERF ]; then
        set -- $PERF kvm stat record -o $B.perf -- "$@"
        perfed=1
    fi
    sz_fresh
    rm -f $B.fifo $B.err $B.grace
    mkfifo $B.fifo
    sz_step "boot $seq ($phase): $vmm"
    echo "@@L1 VB_BOOT $seq $vmm $phase start"
    "$@" </dev/null >$B.fifo 2>$B.err &
    pid=$!
    sz_track $pid
    # The reader is a subshell of its own: this shell's children (the peers)
    # exiting while it opens the fifo cannot interrupt that open.
    (
        grace=
        while IFS= read -r l || [ -n "$l" ]; do
            printf '%s\n' "$l"
            case "$l" in
            *"@@L2 REBOOT"*)
                if [ -z "$grace" ]; then
                    (
                        sleep $REBOOT_GRACE
                        kill -0 $pid 2>/dev/null || exit 0
                        echo >$B.grace
                        if [ -n "$perfed" ]; then sz_kill_tree $pid; else kill -9 $pid; fi
                    ) &
                    grace=$!
                fi
                ;;
            esac
        done <$B.fifo
        [ -n "$grace" ] && kill $grace 2>/dev/null
    ) &
    rd=$!
    wait $pid
    rc=$?
    wait $rd
    kill $g2h $h2g 2>/dev/null
    wait $g2h $h2g 2>/dev/null
    how=exited
    if [ -e $B.grace ]; then
        how=killed-after-reboot
    elif [ $rc = 137 ]; then
        how=timeout
    fi
    [ -s $B.stats ] && sed "s/^/@@L1 VB_STATS $seq /" $B.stats
    if [ -s $B.perf ]; then
        sz_perf_report $B.perf | sed "s/^/@@L1 VB_PERF $seq /"
    fi
    rm -f $B.stats $B.perf
    echo "@@L1 VB_BOOT $seq $vmm $phase end rc=$rc how=$how"
    [ $rc = 0 ] || sz_check BOOT_ERR "$seq $(head -n 1 $B.err)"
    head -n 20 $B.err | sed "s/^/boot $seq ($vmm): /" >&2
    sed "s/^/boot $seq (L1 peer 9000): /" $B.g2h.err >&2
    sed "s/^/boot $seq (L1 peer 9001): /" $B.h2g.err >&2
    rm -f $B.fifo $B.err $B.grace $B.g2h.err $B.h2g.err
}

# rotate A B C: B C A.
rotate() {
    first=$1
    shift
    echo "$@" $first
}

seq=0
for vmm in $vmms; do
    seq=$((seq + 1))
    sz_boot $seq $vmm warmup
done
order=$vmms
for round in $ROUNDS; do
    for vmm in $order; do
        seq=$((seq + 1))
        sz_boot $seq $vmm round$round
    done
    order=$(rotate $order)
done
rm -f $IMG $B.*
sz_step "done"
"#;

/// L1 before the driver: the TAP, with 169.254.0.1/16 (the guest takes .2).
pub const VIRTIO_BENCH_BEFORE: &str = r#"tunctl -t sztap0 >/dev/null
ip addr add 169.254.0.1/16 dev sztap0
ip link set sztap0 up
"#;

/// L1 after the driver: stop what it left running, remove the TAP.
pub const VIRTIO_BENCH_AFTER: &str = r#"sz_reap
rm -f /tmp/bench.img /tmp/vb.*
tunctl -d sztap0 >/dev/null
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripts::{l1_init, Asset, SCENARIOS};

    fn scenario() -> &'static crate::scripts::Scenario {
        SCENARIOS.iter().find(|s| s.name == "virtio-bench").unwrap()
    }

    #[test]
    fn the_scenario_is_opt_in_with_its_guest_and_assets() {
        let sc = scenario();
        assert!(sc.opt_in);
        assert_eq!((sc.vcpus, sc.memory_mib), (VCPUS, MEMORY_MIB));
        assert_eq!(sc.min_timeout, TIMEOUT_SECS);
        for a in [
            Asset::Qemu,
            Asset::Firecracker,
            Asset::Perf,
            Asset::VirtioBench,
        ] {
            assert!(sc.assets.contains(&a), "{a:?}");
        }
        let words: Vec<String> = sc.cmdline().split(' ').map(str::to_string).collect();
        for w in [
            "console=ttyS0",
            "panic=-1",
            "reboot=k",
            "sz_scenario=virtio-bench",
        ] {
            assert!(words.iter().any(|x| x == w), "{w} in {words:?}");
        }
        let s = l1_init(&[*sc], &[], "sz-abc", 60, None);
        let driver = s
            .find("cat >/tmp/virtio-bench.sh <<'SZ_DRIVER_EOF'\n")
            .unwrap();
        let tap = s.find("tunctl -t sztap0").unwrap();
        let run = s
            .find("sz_run virtio-bench plain '/bin/sh' '/tmp/virtio-bench.sh'\n")
            .unwrap();
        let after = s.find("tunctl -d sztap0").unwrap();
        assert!(driver < run && tap < run && run < after);
        assert!(s[..run].contains(&format!("SZ_TIMEOUT={TIMEOUT_SECS}\n")));
        assert!(s.contains("\nSZ_MEM_MIB=256\nSZ_VCPUS=2\n"));
        assert!(s.contains("SZ_BENCH_BYTES=64M\nSZ_BENCH_TCP_BYTES=32M\n"));
    }

    #[test]
    fn the_driver_matches_its_constants() {
        let d = VIRTIO_BENCH_DRIVER;
        assert!(d.contains(&rounds_env(ROUNDS)));
        assert_eq!(rounds_env(2), "ROUNDS=\"1 2\"\n");
        assert!(d.contains(&format!("BOOT_SECS={BOOT_TIMEOUT_SECS}\n")));
        assert!(d.contains(&format!("REBOOT_GRACE={REBOOT_GRACE_SECS}\n")));
        assert!(d.contains(&format!("IMG={IMAGE}\n")));
        assert!(d.contains(&format!("MAC={MAC}\n")));
        // Each subzero variant's engine is its name's suffix.
        for (vmm, engine) in SUBZERO_ENGINES {
            assert_eq!(vmm.strip_prefix("subzero-"), Some(*engine));
        }
        assert!(d.contains(
            "--disk \"$disk${SZ_DISK_EXTRA:+,$SZ_DISK_EXTRA}\" --net \"tap=sztap0,mac=$MAC\""
        ));
        assert!(d.contains(
            "[ $phase = warmup ] && set -- \"$@\" --stats --no-trace --stats-out $B.stats"
        ));
        assert!(d.contains("        set -- $PERF kvm stat record -o $B.perf -- \"$@\"\n"));
        assert!(d.contains("sz_perf_report $B.perf | sed \"s/^/@@L1 VB_PERF $seq /\""));
        assert!(d.contains("sed \"s/^/@@L1 VB_STATS $seq /\" $B.stats"));
        assert!(
            d.contains("set -- $FC --no-api --no-seccomp --config-file $B.fc.json --level Warning")
        );
        assert!(d.contains(r#""drives": [{"drive_id": "d0", "path_on_host": "%s", "is_root_device": false, "is_read_only": false}]"#));
        assert!(d.contains(r#""network-interfaces": [{"iface_id": "eth0", "guest_mac": "%s", "host_dev_name": "sztap0"}]"#));
        assert!(d.contains("-M microvm,acpi=on -enable-kvm -cpu host"));
        assert!(d.contains("-serial stdio -no-reboot -device i8042 -bios $BIOS"));
        assert!(d.contains("-device virtio-blk-device,drive=d0"));
        assert!(d.contains("-device virtio-net-device,netdev=n0,mac=$MAC"));
        // The image and peers are made anew before each boot.
        let fresh = d.find("    sz_fresh\n").unwrap();
        let start = d
            .find("echo \"@@L1 VB_BOOT $seq $vmm $phase start\"")
            .unwrap();
        assert!(fresh < start);
        assert!(d.contains("dd if=/dev/zero of=$IMG bs=1M count=0 seek=64"));
        // The VMMs in VMMS's order unless the env file says otherwise, and
        // the rounds rotate.
        let default = d
            .find(&format!("SZ_VMMS=\"{}\"\n", VMMS.join(" ")))
            .unwrap();
        let env = d
            .find("[ -r /l2/vbench.env ] && . /l2/vbench.env\n")
            .unwrap();
        let pick = d.find("for v in $SZ_VMMS; do\n").unwrap();
        assert!(default < env && env < pick);
        assert!(d.contains("order=$(rotate $order)"));
        let warm = d.find("sz_boot $seq $vmm warmup\n").unwrap();
        let round = d.find("sz_boot $seq $vmm round$round\n").unwrap();
        assert!(warm < round);
    }

    #[test]
    fn the_vmm_list_takes_peers_and_subzero_variants_only() {
        assert_eq!(
            vmm_list(" subzero-uring  subzero-uring-q1 firecracker\n").unwrap(),
            "subzero-uring subzero-uring-q1 firecracker"
        );
        assert_eq!(
            vmm_list(
                "subzero-sync-q16 qemu-microvm subzero-uring-nosec subzero-sync-q2-nosec-normal"
            )
            .unwrap(),
            "subzero-sync-q16 qemu-microvm subzero-uring-nosec subzero-sync-q2-nosec-normal"
        );
        for bad in [
            "subzero",
            "subzero-fast",
            "subzero-uring-q0",
            "subzero-uring-q17",
            "subzero-uring-q01",
            "subzero-uring-qx",
            "qemu",
            "subzero-sync;reboot",
            "subzero-nosec",
            "subzero-uring-nosec-q1",
            "subzero-uring-normal-nosec",
        ] {
            let e = vmm_list(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains("subzero-uring-q1"), "{e}");
        }
        assert!(vmm_list("firecracker firecracker")
            .unwrap_err()
            .contains("twice"));
        // The driver splits a variant's name as vmm_list reads it.
        let d = VIRTIO_BENCH_DRIVER;
        assert!(d.contains("disk=\"path=$IMG,engine=${v%%-q*}\"\n"));
        assert!(d.contains("case $v in *-q*) disk=\"$disk,queues=${v##*-q}\" ;; esac\n"));
        assert!(d.contains(
            "case $v in *-normal) v=${v%-normal} flags=\"$flags --device-sched normal\" ;; esac\n"
        ));
        assert!(
            d.contains("case $v in *-nosec) v=${v%-nosec} flags=\"$flags --no-seccomp\" ;; esac\n")
        );
    }

    #[test]
    fn the_l2_init_runs_every_row_then_reboots() {
        let s = crate::scripts::l2_init(&[]);
        let case = s.find("\nvirtio-bench)\n").unwrap();
        let rest = &s[case..];
        let body = &rest[..rest.find("\n    ;;\n").unwrap()];
        let mut last = 0;
        for (key, _, _) in ROWS {
            let at = match key.strip_prefix("rand-") {
                Some(_) => body.find("@@L2 BENCH rand-$rw-qd$qd "),
                None => body.find(&format!("@@L2 BENCH {key} ")),
            };
            let at = at.unwrap_or_else(|| panic!("no row {key}"));
            assert!(at >= last, "{key} out of order");
            last = at;
        }
        assert!(body.contains("for rw in read write; do\n        for qd in 1 16; do\n"));
        assert!(body.contains(&format!("lab-peer rand $rw /dev/vda {RAND_SECS} --qd $qd")));
        let reboot = body.find("echo \"@@L2 REBOOT\"\n    reboot -f\n").unwrap();
        assert!(last < reboot);
    }
}
