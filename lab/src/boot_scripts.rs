//! The `boot-bench` scenario (opt-in): boot time to init, and memory
//! overhead, of subzero and its peers in one L1, on the same guest.
//!
//! Its L1 driver ([`BOOT_BENCH_DRIVER`], run like the API drivers, see
//! [`crate::api_scripts::driver_file`]) boots the lab's Debian bzImage and
//! L2 initramfs with [`VCPUS`] vCPUs, [`MEMORY_MIB`] MiB and one command
//! line (`console=ttyS0 quiet panic=-1 reboot=k sz_scenario=boot-bench`)
//! under each of [`VMMS`] that L1 has:
//! - `subzero`: `subzero run` with its default settings;
//! - `subzero-guest-decompress`: the same with `--no-host-decompress` (the
//!   bzImage decompresses itself in the guest). A subzero without that flag
//!   rejects it: those boots fail, with subzero's first stderr line;
//! - `firecracker`: `/usr/bin/firecracker --no-api --no-seccomp
//!   --config-file vm.json --level Warning`, when the lab copied the peer
//!   into L1 (see `SUBZERO_LAB_FIRECRACKER`); otherwise it is skipped, and
//!   `@@L1 CHECK boot-bench FIRECRACKER skipped: ...` says so. Firecracker
//!   appends `pci=off` to the command line, and exits only when the guest
//!   resets through the i8042: hence `reboot=k` and the guest's `reboot -f`;
//! - `qemu-microvm`: `qemu-system-x86_64 -M microvm,acpi=on -enable-kvm
//!   -cpu host` with its SeaBIOS (`bios-microvm.bin`), `-no-reboot`, the
//!   serial console on stdout, as `virtio-bench` runs it, and `-device
//!   i8042`: microvm has none, and without it the guest's `reboot=k` reset
//!   spins reading port 0x64 (65536 reads, each an exit to QEMU, ten times
//!   over) before it falls back to other ways, for a minute or more in L1,
//!   which has frozen L1 once. microvm's FADT does not announce an 8042, so
//!   the guest's i8042 driver does not probe it: only the reset uses it.
//!
//! Protocol: one warm-up boot of each VMM, then [`ROUNDS`] timed rounds in
//! which every VMM boots once, the order rotating by one each round (A B C
//! D, then B C D A, ...). Each boot is printed between `@@L1 BB_BOOT <seq>
//! <vmm> <phase> start` and `@@L1 BB_BOOT <seq> <vmm> <phase> end rc=<rc>
//! how=<exited|timeout|killed-after-reboot> mem=<own_kb>,<guest_kb>,
//! <guest_maps>,<maps>|none` (phase `warmup`, `round1`... ); its console
//! is copied to L1's line by line as it comes, so the host's timestamps
//! time it as the lab times every boot ([`crate::boot_facts`]): total =
//! start marker -> the guest's `@@L2 INIT`, kernel-to-init = the guest's
//! `/proc/uptime` at init (`@@L2 UPTIME`), before-kernel = the difference.
//! The guest then prints `@@L2 HOLD` and sleeps 1.5 s, while L1 reads
//! `/proc/<pid>/smaps` of the VMM: guest RAM is every anonymous mapping of
//! at least the guest's memory size; the rest of the Rss is the VMM's own.
//! Then the guest prints `@@L2 REBOOT` and runs `reboot -f`; a VMM still
//! running [`REBOOT_GRACE_SECS`] later is killed (`how=killed-after-reboot`).
//! A failed boot's first stderr line is `@@L1 CHECK boot-bench BOOT_ERR
//! <seq> <line>`, and its stderr (up to 20 lines) goes to the driver's
//! stderr prefixed `boot <seq> (<vmm>): `.
//!
//! Diagnostics, after the timed rounds, for subzero and Firecracker:
//! - phase `diag`: one boot each with [`DIAG_CMDLINE`] added; the guest
//!   does not print the kernel log on the serial console (`quiet` keeps
//!   `initcall_debug`'s KERN_DEBUG lines off it; `log_buf_len=4M` keeps them
//!   all in the ring buffer) but reads `dmesg` at init and prints
//!   `@@L2 INITCALL <usecs> <function> ret=<n>` for the 15 longest
//!   initcalls, `@@L2 DMESG_AT <key> <seconds> <line>` for the lines that
//!   match [`DMESG_KEYS`], and `@@L2 INITCALL_TOTAL <usecs> <count>`;
//! - phase `perf`: one boot each under `perf kvm stat record` (Debian's
//!   perf, copied into L1 as for `hw-exits`; tracefs mounted), then `perf kvm
//!   stat report --event=vmexit --key=sample` between `@@L1 PERF_REPORT
//!   <vmm> begin` and `... end`, and `@@L1 CHECK boot-bench REPORT_RC <vmm>
//!   <rc>`. Without perf in L1: `@@L1 CHECK boot-bench PERF_UNAVAILABLE
//!   <why>`.

/// The VMMs, in the warm-up's order (those L1 lacks are left out).
pub const VMMS: &[&str] = &[
    "subzero",
    "subzero-guest-decompress",
    "firecracker",
    "qemu-microvm",
];

/// The VMM variant whose flag (`--no-host-decompress`) subzero may not
/// know yet: its boots may fail, with subzero's reason printed.
pub const GUEST_DECOMPRESS: &str = "subzero-guest-decompress";

/// The flag that variant adds to `subzero run`.
pub const GUEST_DECOMPRESS_FLAG: &str = "--no-host-decompress";

/// Timed rounds after the warm-up.
pub const ROUNDS: u32 = 5;

/// The guest's vCPUs and memory, for every VMM.
pub const VCPUS: u32 = 3;
/// See [`VCPUS`].
pub const MEMORY_MIB: u32 = 384;

/// Seconds each boot may run before it is killed.
pub const BOOT_TIMEOUT_SECS: u64 = 90;

/// Seconds a VMM may keep running after its guest printed `@@L2 REBOOT`.
pub const REBOOT_GRACE_SECS: u64 = 10;

/// The most boots the driver makes: warm-up and rounds for every VMM, then
/// a `diag` and a `perf` boot each for subzero and Firecracker.
pub const MAX_BOOTS: u64 = (1 + ROUNDS as u64) * VMMS.len() as u64 + 2 * 2;

/// The scenario's timeout: every boot at its timeout, plus two perf
/// reports.
pub const TIMEOUT_SECS: u64 = MAX_BOOTS * BOOT_TIMEOUT_SECS + 2 * 90;

/// Words added to the command line for the diagnostic boots (`sz_bb=diag`
/// tells the L2 init to report from `dmesg`).
pub const DIAG_CMDLINE: &str = "initcall_debug printk.time=1 log_buf_len=4M sz_bb=diag";

/// The `dmesg` lines whose timestamps the diagnostic boot prints: (key,
/// the awk pattern the L2 init matches).
pub const DMESG_KEYS: &[(&str, &str)] = &[
    ("linux-version", "Linux version"),
    (
        "calibration",
        "Calibrating delay loop|tsc: Refined|tsc: Detected",
    ),
    ("clocksource", "clocksource: Switched to clocksource"),
    ("unpack-initrd", "Trying to unpack rootfs image"),
    ("free-initrd", "Freeing initrd memory"),
    ("free-initmem", "Freeing unused kernel image"),
    ("run-init", r"Run \/init as init process"),
];

/// The driver. Variables from [`crate::api_scripts::driver_file`]:
/// `SZ_KERNEL`, `SZ_INITRD`, `SZ_CMDLINE`, `SZ_MEM_MIB`, `SZ_VCPUS`.
pub const BOOT_BENCH_DRIVER: &str = r#"FC=/usr/bin/firecracker
QEMU=/usr/bin/qemu-system-x86_64
BIOS=/usr/share/seabios/bios-microvm.bin
PERF=/usr/bin/perf
BOOT_SECS=90
REBOOT_GRACE=10
ROUNDS="1 2 3 4 5"
DIAG_CMDLINE="initcall_debug printk.time=1 log_buf_len=4M sz_bb=diag"
B=/tmp/bb
rm -f $B.*

vmms="subzero subzero-guest-decompress"
diag_vmms=subzero
if [ -x $FC ]; then
    vmms="$vmms firecracker"
    diag_vmms="subzero firecracker"
    sz_check FIRECRACKER "$($FC --version 2>&1 | head -n 1)"
else
    sz_check FIRECRACKER "skipped: not in L1 (the host has no peer Firecracker, see SUBZERO_LAB_FIRECRACKER)"
fi
if [ -x $QEMU ]; then
    vmms="$vmms qemu-microvm"
    sz_check QEMU "$($QEMU --version 2>&1 | head -n 1)"
else
    sz_check QEMU "skipped: not in L1"
fi
sz_check VMMS $vmms
sz_check CMDLINE "$SZ_CMDLINE"

# sz_mem PID: "OWN_KB GUEST_KB GUEST_MAPS MAPS" from /proc/PID/smaps. Guest
# RAM is every anonymous mapping of at least SZ_MEM_MIB MiB; OWN_KB is the
# Rss of every other mapping.
sz_mem() {
    awk -v min=$((SZ_MEM_MIB * 1024)) '
        function done() {
            if (!open) return
            n++
            if (anon && size >= min) { g += rss; gn++ } else own += rss
        }
        /^[0-9a-f]+-[0-9a-f]+ / {
            done()
            open = 1; size = 0; rss = 0; p = $6
            anon = (p == "" || p ~ /^\[anon/ || p ~ /^\/memfd:/ || p ~ /^\/dev\/zero/ || p ~ /^\/anon_hugepage/)
            next
        }
        $1 == "Size:" { size = $2; next }
        $1 == "Rss:" { rss = $2; next }
        END { done(); if (n) printf "%d %d %d %d\n", own, g, gn, n }' /proc/$1/smaps 2>/dev/null
}
# sz_maps PID: the 6 mappings outside guest RAM with the most Rss, as
# "@@L1 BB_MAP RSS_KB ANON_HUGE_KB SIZE_KB NAME" (L1 runs THP "always": a
# huge page in a small mapping shows here).
sz_maps() {
    awk -v min=$((SZ_MEM_MIB * 1024)) '
        function done() {
            if (open && !(anon && size >= min) && rss > 0)
                printf "%d %d %d %s\n", rss, thp, size, (p == "" ? "[anon]" : p)
        }
        /^[0-9a-f]+-[0-9a-f]+ / {
            done()
            open = 1; size = 0; rss = 0; thp = 0; p = $6
            anon = (p == "" || p ~ /^\[anon/ || p ~ /^\/memfd:/ || p ~ /^\/dev\/zero/ || p ~ /^\/anon_hugepage/)
            next
        }
        $1 == "Size:" { size = $2; next }
        $1 == "Rss:" { rss = $2; next }
        $1 == "AnonHugePages:" { thp = $2; next }
        END { done() }' /proc/$1/smaps 2>/dev/null | sort -n -r | head -n 6 | sed 's/^/@@L1 BB_MAP /'
}
# sz_boot SEQ VMM PHASE [WORDS]: one boot of VMM (WORDS added to the
# command line) between BB_BOOT start and end markers. A reader copies the
# VMM's console to L1's line by line, reads the VMM's smaps when the guest
# prints @@L2 HOLD (not under perf), and gives the VMM REBOOT_GRACE
# seconds after @@L2 REBOOT.
sz_boot() {
    seq=$1 vmm=$2 phase=$3
    cmdline=$SZ_CMDLINE
    [ -n "$4" ] && cmdline="$cmdline $4"
    case $vmm in
    subzero | subzero-guest-decompress)
        set -- /bin/subzero run --kernel "$SZ_KERNEL" --initrd "$SZ_INITRD" --cmdline "$cmdline" \
            --memory "${SZ_MEM_MIB}M" --vcpus "$SZ_VCPUS"
        [ $vmm = subzero ] || set -- "$@" --no-host-decompress
        ;;
    firecracker)
        printf '{\n  "boot-source": {"kernel_image_path": "%s", "initrd_path": "%s", "boot_args": "%s"},\n  "machine-config": {"vcpu_count": %s, "mem_size_mib": %s},\n  "drives": []\n}\n' \
            "$SZ_KERNEL" "$SZ_INITRD" "$cmdline" "$SZ_VCPUS" "$SZ_MEM_MIB" >$B.fc.json
        set -- $FC --no-api --no-seccomp --config-file $B.fc.json --level Warning
        ;;
    qemu-microvm)
        # microvm has no i8042: without one, reboot=k spins on port 0x64.
        set -- $QEMU -M microvm,acpi=on -enable-kvm -cpu host -nodefaults -no-user-config -display none \
            -serial stdio -no-reboot -device i8042 -bios $BIOS -kernel "$SZ_KERNEL" -initrd "$SZ_INITRD" \
            -append "$cmdline" -m "${SZ_MEM_MIB}M" -smp "$SZ_VCPUS"
        ;;
    esac
    # busybox timeout execs the command in its own process: $! is the VMM.
    set -- timeout -s KILL $BOOT_SECS "$@"
    [ $phase = perf ] && set -- $PERF kvm stat record -o $B.perf.$vmm -- "$@"
    rm -f $B.fifo $B.mem $B.err $B.grace
    mkfifo $B.fifo
    sz_step "boot $seq ($phase): $vmm"
    echo "@@L1 BB_BOOT $seq $vmm $phase start"
    "$@" </dev/null >$B.fifo 2>$B.err &
    pid=$!
    sz_track $pid
    grace=
    while IFS= read -r l || [ -n "$l" ]; do
        printf '%s\n' "$l"
        case "$l" in
        *"@@L2 HOLD"*)
            if [ $phase != perf ] && [ ! -s $B.mem ]; then
                sz_mem $pid >$B.mem
                [ $phase = round1 ] && sz_maps $pid
            fi
            ;;
        *"@@L2 REBOOT"*)
            if [ -z "$grace" ]; then
                (
                    sleep $REBOOT_GRACE
                    # Builtins first: L1 may be too busy for forks.
                    kill -0 $pid 2>/dev/null || exit 0
                    echo >$B.grace
                    if [ $phase = perf ]; then sz_kill_tree $pid; else kill -9 $pid; fi
                ) &
                grace=$!
            fi
            ;;
        esac
    done <$B.fifo
    wait $pid
    rc=$?
    [ -n "$grace" ] && kill $grace 2>/dev/null
    how=exited
    if [ -e $B.grace ]; then
        how=killed-after-reboot
    elif [ $rc = 137 ]; then
        how=timeout
    fi
    mem=none
    [ -s $B.mem ] && mem=$(tr ' ' , <$B.mem)
    echo "@@L1 BB_BOOT $seq $vmm $phase end rc=$rc how=$how mem=$mem"
    [ $rc = 0 ] || sz_check BOOT_ERR "$seq $(head -n 1 $B.err)"
    head -n 20 $B.err | sed "s/^/boot $seq ($vmm): /" >&2
    rm -f $B.fifo $B.mem $B.err $B.grace
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

for vmm in $diag_vmms; do
    seq=$((seq + 1))
    sz_boot $seq $vmm diag "$DIAG_CMDLINE"
done

if [ -x $PERF ]; then
    sz_tracefs
    for vmm in $diag_vmms; do
        seq=$((seq + 1))
        sz_boot $seq $vmm perf
        sz_step "perf kvm stat report: $vmm"
        sz_perf_report $B.perf.$vmm >$B.report
        sz_check REPORT_RC "$vmm $?"
        echo "@@L1 PERF_REPORT $vmm begin"
        cat $B.report
        echo
        echo "@@L1 PERF_REPORT $vmm end"
        rm -f $B.perf.$vmm $B.report
    done
else
    sz_check PERF_UNAVAILABLE "$PERF is not in L1: the host has no $PERF (apt-get install linux-perf)"
fi
sz_step "done"
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripts::{l1_init, Asset, SCENARIOS};

    fn scenario() -> &'static crate::scripts::Scenario {
        SCENARIOS.iter().find(|s| s.name == "boot-bench").unwrap()
    }

    #[test]
    fn the_scenario_is_opt_in_with_its_guest_and_assets() {
        let sc = scenario();
        assert!(sc.opt_in);
        assert_eq!((sc.vcpus, sc.memory_mib), (VCPUS, MEMORY_MIB));
        assert_eq!(sc.min_timeout, TIMEOUT_SECS);
        for a in [Asset::Qemu, Asset::Firecracker, Asset::Perf] {
            assert!(sc.assets.contains(&a), "{a:?}");
        }
        let words: Vec<String> = sc.cmdline().split(' ').map(str::to_string).collect();
        for w in ["console=ttyS0", "quiet", "panic=-1", "reboot=k"] {
            assert!(words.iter().any(|x| x == w), "{w} in {words:?}");
        }
        let s = l1_init(&[*sc], &[], "sz-abc", 60, None);
        let driver = s
            .find("cat >/tmp/boot-bench.sh <<'SZ_DRIVER_EOF'\n")
            .unwrap();
        let run = s
            .find("sz_run boot-bench plain '/bin/sh' '/tmp/boot-bench.sh'\n")
            .unwrap();
        assert!(driver < run);
        assert!(s[..run].contains(&format!("SZ_TIMEOUT={TIMEOUT_SECS}\n")));
        assert!(s.contains("\nSZ_MEM_MIB=384\nSZ_VCPUS=3\n"));
    }

    #[test]
    fn the_driver_matches_its_constants() {
        let d = BOOT_BENCH_DRIVER;
        let rounds: Vec<String> = (1..=ROUNDS).map(|r| r.to_string()).collect();
        assert!(d.contains(&format!("ROUNDS=\"{}\"\n", rounds.join(" "))));
        assert!(d.contains(&format!("BOOT_SECS={BOOT_TIMEOUT_SECS}\n")));
        assert!(d.contains(&format!("REBOOT_GRACE={REBOOT_GRACE_SECS}\n")));
        assert!(d.contains(&format!("DIAG_CMDLINE=\"{DIAG_CMDLINE}\"\n")));
        assert!(d.contains(&format!("|| set -- \"$@\" {GUEST_DECOMPRESS_FLAG}\n")));
        assert!(
            d.contains("set -- $FC --no-api --no-seccomp --config-file $B.fc.json --level Warning")
        );
        assert!(d.contains("-M microvm,acpi=on -enable-kvm -cpu host"));
        assert!(d.contains("-serial stdio -no-reboot -device i8042 -bios $BIOS"));
        assert!(d.contains(
            "[ $phase = perf ] && set -- $PERF kvm stat record -o $B.perf.$vmm -- \"$@\""
        ));
        assert!(d.contains("sz_perf_report $B.perf.$vmm >$B.report\n"));
        // The VMMs in VMMS's order, and the rounds rotate.
        let lists = [
            format!("vmms=\"{} {}\"\n", VMMS[0], VMMS[1]),
            format!("vmms=\"$vmms {}\"\n", VMMS[2]),
            format!("vmms=\"$vmms {}\"\n", VMMS[3]),
        ];
        let at: Vec<usize> = lists.iter().map(|l| d.find(l.as_str()).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{at:?}");
        assert!(d.contains("order=$(rotate $order)"));
        // Warm-up, then the rounds, then diag, then perf.
        let phases = [
            "warmup\n",
            "round$round\n",
            "diag \"$DIAG_CMDLINE\"\n",
            "perf\n",
        ];
        let at: Vec<usize> = phases
            .iter()
            .map(|p| d.find(&format!("sz_boot $seq $vmm {p}")).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{at:?}");
    }

    #[test]
    fn the_l2_init_holds_reports_dmesg_and_reboots() {
        let s = crate::scripts::l2_init(&[]);
        let case = s.find("\nboot-bench)\n").unwrap();
        let rest = &s[case..];
        let end = rest.find("\n    ;;\n").unwrap();
        let body = &rest[..end];
        for (key, pattern) in DMESG_KEYS {
            assert!(
                body.contains(&format!("/{pattern}/ {{ key = \"{key}\" }}")),
                "{key}"
            );
        }
        let hold = body
            .find("echo \"@@L2 HOLD\"\n        sleep 1.5\n")
            .unwrap();
        let reboot = body.find("echo \"@@L2 REBOOT\"\n    reboot -f\n").unwrap();
        assert!(hold < reboot);
        assert!(body.contains("if [ \"$sz_bb\" = diag ]; then"));
        assert!(body.contains("head -n 15"));
    }

    /// The smaps sum, run by busybox's awk on a sample.
    #[test]
    fn the_memory_sample_leaves_out_the_guest_ram_mapping() {
        if !std::path::Path::new("/bin/busybox").is_file() {
            eprintln!("no /bin/busybox: skipped");
            return;
        }
        let d = BOOT_BENCH_DRIVER;
        let start = d.find("sz_mem() {\n").unwrap();
        let end = start + d[start..].find("\n}\n").unwrap() + 3;
        let smaps = "\
55d0c2a00000-55d0c2a2f000 r--p 00000000 fe:01 123   /bin/subzero
Size:                188 kB
KernelPageSize:        4 kB
Rss:                 180 kB
Pss:                 180 kB
VmFlags: rd mr mw me dw sd
7f0000000000-7f0018000000 rw-p 00000000 00:00 0
Size:             393216 kB
Rss:              150000 kB
7f0018000000-7f0018001000 ---p 00000000 00:00 0
Size:                  4 kB
Rss:                   0 kB
7f1000000000-7f1001000000 rw-p 00000000 00:00 0
Size:              16384 kB
Rss:                2000 kB
7f2000000000-7f2000001000 rw-s 00000000 00:0e 99   anon_inode:kvm-vcpu:0
Size:                  4 kB
Rss:                   4 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0    [stack]
Size:                132 kB
Rss:                  16 kB
";
        let dir = std::env::temp_dir().join(format!("sz-bb-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("proc/42")).unwrap();
        std::fs::write(dir.join("proc/42/smaps"), smaps).unwrap();
        let script = format!(
            "SZ_MEM_MIB=384\n{}sz_mem 42\n",
            d[start..end].replace(
                "/proc/$1/smaps",
                &format!("{}/proc/$1/smaps", dir.display())
            )
        );
        let out = std::process::Command::new("/bin/busybox")
            .args(["sh", "-c", &script])
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "2200 150000 1 6\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The diagnostic boot's report, run by busybox (sh, awk, sort) on a
    /// sample kernel log.
    #[test]
    fn the_diagnostic_boot_reports_initcalls_and_timestamps_from_dmesg() {
        if !std::path::Path::new("/bin/busybox").is_file() {
            eprintln!("no /bin/busybox: skipped");
            return;
        }
        let s = crate::scripts::l2_init(&[]);
        let start = s.find("    if [ \"$sz_bb\" = diag ]; then\n").unwrap();
        let end = start + s[start..].find("    else\n").unwrap();
        let dir = std::env::temp_dir().join(format!("sz-bb-diag-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut dmesg = String::from(
            "[    0.000000] Linux version 6.1.0-28-cloud-amd64 (debian-kernel@lists.debian.org)\n\
             [    0.000000] Command line: console=ttyS0 quiet\n\
             [    0.004321] tsc: Detected 2994.372 MHz processor\n\
             [    0.120000] Calibrating delay loop (skipped), value calculated using timer frequency.. 5988.74 BogoMIPS (lpj=11977488)\n\
             [    0.200000] calling  init_foo+0x0/0x40 @ 1\n\
             [    0.201000] initcall acpi_init+0x0/0x490 returned -19 after 250000 usecs\n\
             [    1.500000] clocksource: Switched to clocksource kvm-clock\n\
             [    2.000000] initcall foo_mod_init+0x0/0x10 [foo] returned 0 after 7 usecs\n\
             [    2.900000] Freeing unused kernel image (initmem) memory: 2000K\n\
             [    2.950000] Run /init as init process\n",
        );
        for i in 0..20 {
            dmesg.push_str(&format!(
                "[    0.3{i:05}] initcall f{i}+0x0/0x20 returned 0 after {} usecs\n",
                1000 + i
            ));
        }
        std::fs::write(dir.join("dmesg.in"), dmesg).unwrap();
        let d = dir.display().to_string();
        let script = s[start..end].replace("/tmp/", &format!("{d}/")).replace(
            &format!("dmesg -s 16777216 >{d}/dmesg 2>&1"),
            &format!("cp {d}/dmesg.in {d}/dmesg"),
        ) + "    fi\n";
        // busybox's applets, as in L2.
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for applet in ["awk", "sort", "head", "wc", "cp", "echo"] {
            std::os::unix::fs::symlink("/bin/busybox", bin.join(applet)).unwrap();
        }
        let out = std::process::Command::new("/bin/busybox")
            .args(["sh", "-c", &format!("sz_bb=diag\n{script}")])
            .env("PATH", &bin)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        let want_total = 250000 + 7 + (0..20).map(|i| 1000 + i).sum::<u64>();
        assert!(
            lines.contains(&format!("@@L2 INITCALL_TOTAL {want_total} 22").as_str()),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with("@@L2 INITCALL "))
                .count(),
            15,
            "{text}"
        );
        assert!(lines.contains(&"@@L2 INITCALL 250000 acpi_init+0x0/0x490 ret=-19"));
        assert!(lines.contains(&"@@L2 INITCALL 1019 f19+0x0/0x20 ret=0"));
        assert!(lines.contains(&"@@L2 DMESG_AT linux-version 0.000000 Linux version 6.1.0-28-cloud-amd64 (debian-kernel@lists.debian.org)"));
        assert!(lines
            .contains(&"@@L2 DMESG_AT calibration 0.004321 tsc: Detected 2994.372 MHz processor"));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("@@L2 DMESG_AT calibration 0.120000 Calibrating delay loop")));
        assert!(lines.contains(
            &"@@L2 DMESG_AT clocksource 1.500000 clocksource: Switched to clocksource kvm-clock"
        ));
        assert!(lines.contains(&"@@L2 DMESG_AT free-initmem 2.900000 Freeing unused kernel image (initmem) memory: 2000K"));
        assert!(lines.contains(&"@@L2 DMESG_AT run-init 2.950000 Run /init as init process"));
        assert!(lines.contains(&"@@L2 DMESG_LINES 30"));
    }
}
