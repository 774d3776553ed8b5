//! The scenarios and the two /init scripts (busybox sh) that run them.
//!
//! Marker protocol, one marker per console line (a marker may be preceded by
//! other text on its line; the parser looks for it anywhere):
//! - L1 (the QEMU guest that runs subzero): `@@L1 INIT`, `@@L1 KVM present`,
//!   `@@L1 BEGIN <name>`, `@@L1 START <name>` (printed immediately before
//!   subzero is exec'd), `@@L1 END <name> rc=<exit code>`,
//!   `@@L1 STDERR <name> | <line>`, `@@L1 ALL_DONE`; when subzero survives
//!   its timeout (stuck in the kernel): `@@L1 HUNG <name> pid=<pid>`,
//!   `@@L1 DIAG <name> | <task state and kernel stack>` and `rc=hung`.
//! - L2 (the guest subzero boots): `@@L2 INIT scenario=<name>` first, then
//!   `@@L2 <KEY> <value>` facts, then `@@L2 POWEROFF`.

/// One L2 boot under subzero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    /// Name, passed to the L2 init as `sz_scenario=<name>`.
    pub name: &'static str,
    /// `--vcpus`.
    pub vcpus: u32,
    /// `--memory` in MiB.
    pub memory_mib: u32,
    /// Whether L1 feeds subzero's stdin (after the guest's READY marker).
    pub stdin_handshake: bool,
    /// The L2 kernel inside L1: [`L1_L2_KERNEL`] (bzImage), [`L1_VMLINUX`]
    /// (ELF with its PVH note) or [`L1_VMLINUX_NOPVH`] (PVH note hidden).
    pub kernel: &'static str,
    /// More `subzero run` arguments.
    pub extra: &'static [&'static str],
    /// Instead of booting L2, run `subzero bench exits` in L1.
    pub bench: bool,
}

/// The plain boot: 1 vCPU, 256 MiB, the bzImage. Scenarios differ from it.
const BOOT: Scenario = Scenario {
    name: "boot",
    vcpus: 1,
    memory_mib: 256,
    stdin_handshake: false,
    kernel: L1_L2_KERNEL,
    extra: &[],
    bench: false,
};

/// All scenarios, in the order L1 runs them.
///
/// `bench` (`subzero bench exits` on real SVM) is opt-in, with
/// `SUBZERO_LAB_SCENARIOS=bench`: in L1 its "hlt + irqfd wake" case loses a
/// wakeup in most runs and then hangs until the scenario timeout. The guest
/// halts with `sti; hlt` and an irqfd interrupt must wake it; TCG's SVM has
/// no NRIPS, and L1's KVM then appears to miss the interrupt that arrives
/// in the STI shadow. A Linux guest does the same but a later timer wakes it.
pub const SCENARIOS: &[Scenario] = &[
    BOOT,
    Scenario {
        name: "smp",
        vcpus: 4,
        ..BOOT
    },
    Scenario {
        name: "memory",
        memory_mib: 512,
        ..BOOT
    },
    Scenario {
        name: "panic",
        ..BOOT
    },
    Scenario {
        name: "stdin",
        stdin_handshake: true,
        ..BOOT
    },
    Scenario {
        name: "vmlinux-pvh",
        kernel: L1_VMLINUX,
        ..BOOT
    },
    Scenario {
        name: "vmlinux-64",
        kernel: L1_VMLINUX_NOPVH,
        ..BOOT
    },
    Scenario {
        name: "stats",
        vcpus: 2,
        extra: &["--stats"],
        ..BOOT
    },
    Scenario {
        name: "live",
        extra: &["--stats-socket", "/tmp/live.sock"],
        ..BOOT
    },
    Scenario {
        name: "bench",
        memory_mib: 0,
        kernel: "",
        bench: true,
        ..BOOT
    },
];

/// Exits per run and rounds of `subzero bench exits` in the lab, where a
/// userspace exit costs about 100 us and an irqfd-woken HLT about 300 us.
pub const BENCH_ARGS: &[&str] = &["bench", "exits", "--exits", "500", "--rounds", "3"];

/// Where things live inside L1.
pub const L1_SUBZERO: &str = "/bin/subzero";
/// The L2 kernel inside L1.
pub const L1_L2_KERNEL: &str = "/l2/bzImage";
/// The ELF vmlinux extracted from the bzImage, inside L1.
pub const L1_VMLINUX: &str = "/l2/vmlinux";
/// The same vmlinux with its PVH note's type overwritten (made by L1's init),
/// so a loader must use the 64-bit entry point.
pub const L1_VMLINUX_NOPVH: &str = "/l2/vmlinux-nopvh";
/// The L2 initramfs inside L1.
pub const L1_L2_INITRD: &str = "/l2/initrd.cpio.gz";

impl Scenario {
    /// The L2 kernel command line.
    pub fn cmdline(&self) -> String {
        format!("console=ttyS0 quiet panic=-1 sz_scenario={}", self.name)
    }

    /// subzero's arguments for this scenario.
    pub fn subzero_args(&self) -> Vec<String> {
        if self.bench {
            return BENCH_ARGS.iter().map(|a| a.to_string()).collect();
        }
        let mut args: Vec<String> = vec![
            "run".into(),
            "--kernel".into(),
            self.kernel.into(),
            "--initrd".into(),
            L1_L2_INITRD.into(),
            "--cmdline".into(),
            self.cmdline(),
            "--memory".into(),
            format!("{}M", self.memory_mib),
            "--vcpus".into(),
            self.vcpus.to_string(),
        ];
        args.extend(self.extra.iter().map(|a| a.to_string()));
        args
    }
}

/// The L2 guest's /init.
pub const L2_INIT: &str = r#"#!/bin/sh
echo "@@L2 INIT scenario=$sz_scenario"
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox mkdir -p /proc /sys /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "@@L2 UPTIME $(cut -d' ' -f1 /proc/uptime)"
case "$sz_scenario" in
boot | stats | live | vmlinux-*)
    echo "@@L2 UNAME $(uname -r)"
    ;;
smp)
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
*)
    echo "@@L2 UNKNOWN_SCENARIO [$sz_scenario]"
    ;;
esac
echo "@@L2 POWEROFF"
poweroff -f
echo "@@L2 POWEROFF_FAILED"
sleep 10
"#;

fn sh_quote(s: &str) -> String {
    assert!(!s.contains('\''), "cannot quote {s:?}");
    format!("'{s}'")
}

/// The L1 guest's /init: mounts, loads the KVM modules (`modules`, file
/// names under /lib/modules in insmod order), checks /dev/kvm, runs
/// `subzero --version` and then every scenario, each under
/// `timeout -s KILL <timeout_secs>`, and powers off.
///
/// `pvh_note_offset`: where in /l2/vmlinux the PVH note's type field is; when
/// given, L1 makes /l2/vmlinux-nopvh with that field set to 0xff.
pub fn l1_init(
    scenarios: &[Scenario],
    modules: &[String],
    token: &str,
    timeout_secs: u64,
    pvh_note_offset: Option<usize>,
) -> String {
    let mut s = String::from("#!/bin/sh\n");
    s.push_str(&format!("SZ_MODULES={}\n", sh_quote(&modules.join(" "))));
    s.push_str(&format!("SZ_TOKEN={}\n", sh_quote(token)));
    s.push_str(&format!("SZ_TIMEOUT={timeout_secs}\n"));
    s.push_str(
        r#"export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "@@L1 INIT uptime=$(cut -d' ' -f1 /proc/uptime)"
if grep -qw svm /proc/cpuinfo; then echo "@@L1 SVM yes"; else echo "@@L1 SVM no"; fi
if grep -qw npt /proc/cpuinfo; then echo "@@L1 NPT yes"; else echo "@@L1 NPT no"; fi
for m in $SZ_MODULES; do
    if out=$(insmod /lib/modules/$m 2>&1); then echo "@@L1 INSMOD $m ok"; else echo "@@L1 INSMOD $m failed: $out"; fi
done
if [ -c /dev/kvm ]; then echo "@@L1 KVM present"; else echo "@@L1 KVM missing"; fi
/bin/subzero --version >/tmp/version 2>&1
rc=$?
echo "@@L1 VERSION rc=$rc $(head -n 1 /tmp/version)"

SZ_MAIN=$$
sz_hung=0
trap 'sz_hung=1' USR1

# sz_watch NAME PID: if subzero (PID) outlives its timeout (it cannot be
# killed, e.g. stuck in the kernel), report each task's state and kernel
# stack, then wake the main shell out of `wait` so the next scenario runs.
sz_watch() {
    sleep $((SZ_TIMEOUT + 15))
    kill -0 $2 2>/dev/null || exit 0
    echo "@@L1 HUNG $1 pid=$2"
    for t in /proc/$2/task/*; do
        echo "@@L1 DIAG $1 | task ${t##*/} state=$(cut -d' ' -f3 $t/stat 2>/dev/null) wchan=$(cat $t/wchan 2>/dev/null)"
        sed "s/^/@@L1 DIAG $1 |   /" $t/stack 2>/dev/null
    done
    kill -USR1 $SZ_MAIN
}

# sz_run NAME MODE SUBZERO-ARGS...   (MODE: plain | handshake | live)
# In live mode, `subzero stat` watches the run's stats socket
# (/tmp/live.sock) and its output follows the run's stderr.
# Runs subzero under `timeout -s KILL`, its stdout (the L2 console) straight
# to this console, its stderr to a file printed after the END marker. In
# handshake mode a reader copies subzero's stdout to the console and writes
# $SZ_TOKEN to subzero's stdin once the guest has printed READY.
sz_run() {
    name=$1
    mode=$2
    shift 2
    echo "@@L1 BEGIN $name"
    rd=
    if [ "$mode" = handshake ]; then
        rm -f /tmp/sin /tmp/sout
        mkfifo /tmp/sin /tmp/sout
        (
            echo "@@L1 START $name"
            exec timeout -s KILL $SZ_TIMEOUT /bin/subzero "$@" </tmp/sin >/tmp/sout 2>/tmp/err.$name
        ) &
        pid=$!
        (
            exec 3>/tmp/sin
            sent=0
            while IFS= read -r l || [ -n "$l" ]; do
                echo "$l"
                case "$l" in
                *"@@L2 READY"*)
                    if [ $sent = 0 ]; then
                        echo "$SZ_TOKEN" >&3
                        sent=1
                        echo "@@L1 SENT $name"
                    fi
                    ;;
                esac
            done </tmp/sout
        ) &
        rd=$!
    else
        (
            echo "@@L1 START $name"
            exec timeout -s KILL $SZ_TIMEOUT /bin/subzero "$@" </dev/null 2>/tmp/err.$name
        ) &
        pid=$!
        if [ "$mode" = live ]; then
            (
                n=0
                until [ -S /tmp/live.sock ] || [ $n -ge 100 ]; do sleep 0.1; n=$((n + 1)); done
                exec timeout -s KILL $SZ_TIMEOUT /bin/subzero stat /tmp/live.sock >/tmp/stat.$name 2>&1
            ) &
            st=$!
        fi
    fi
    sz_watch $name $pid &
    wd=$!
    sz_hung=0
    wait $pid
    rc=$?
    [ $sz_hung = 1 ] && rc=hung
    kill $wd 2>/dev/null
    if [ -n "$rd" ]; then
        [ $sz_hung = 1 ] && kill $rd 2>/dev/null
        wait $rd
    fi
    echo
    echo "@@L1 END $name rc=$rc"
    while IFS= read -r l || [ -n "$l" ]; do echo "@@L1 STDERR $name | $l"; done </tmp/err.$name
    if [ "$mode" = live ]; then
        wait $st
        while IFS= read -r l || [ -n "$l" ]; do echo "@@L1 STDERR $name | $l"; done </tmp/stat.$name
    fi
}

"#,
    );
    if let Some(off) = pvh_note_offset {
        s.push_str(&format!(
            r#"cp {vml} {nopvh}
printf '\377' | dd of={nopvh} bs=1 seek={off} conv=notrunc 2>/dev/null
echo "@@L1 NOPVH note type bytes: $(od -An -tx1 -j {off} -N 4 {vml}) -> $(od -An -tx1 -j {off} -N 4 {nopvh})"
"#,
            vml = L1_VMLINUX,
            nopvh = L1_VMLINUX_NOPVH,
        ));
    }
    for sc in scenarios {
        let mode = if sc.stdin_handshake {
            "handshake"
        } else if sc.extra.contains(&"--stats-socket") {
            "live"
        } else {
            "plain"
        };
        let args: Vec<String> = sc.subzero_args().iter().map(|a| sh_quote(a)).collect();
        s.push_str(&format!("sz_run {} {mode} {}\n", sc.name, args.join(" ")));
    }
    s.push_str(
        r#"echo "@@L1 ALL_DONE uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f
"#,
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l1_init_defines_variables_before_use_and_runs_each_scenario() {
        let s = l1_init(
            SCENARIOS,
            &["irqbypass.ko".into(), "kvm.ko".into()],
            "sz-abc",
            90,
            Some(1234),
        );
        let vars = s.find("SZ_MODULES='irqbypass.ko kvm.ko'").unwrap();
        assert!(vars < s.find("for m in $SZ_MODULES").unwrap());
        assert!(s.contains("SZ_TOKEN='sz-abc'\n"));
        assert!(s.contains("SZ_TIMEOUT=90\n"));
        assert!(s.contains(
            "sz_run smp plain 'run' '--kernel' '/l2/bzImage' '--initrd' '/l2/initrd.cpio.gz' \
             '--cmdline' 'console=ttyS0 quiet panic=-1 sz_scenario=smp' '--memory' '256M' '--vcpus' '4'\n"
        ));
        assert!(s.contains("sz_run stdin handshake "));
        assert!(s.find("sz_run stdin").unwrap() < s.find("@@L1 ALL_DONE uptime").unwrap());
        assert!(s.starts_with("#!/bin/sh\n"));
        let patch = s
            .find("printf '\\377' | dd of=/l2/vmlinux-nopvh bs=1 seek=1234 conv=notrunc")
            .unwrap();
        assert!(
            patch
                < s.find("sz_run vmlinux-64 plain 'run' '--kernel' '/l2/vmlinux-nopvh'")
                    .unwrap()
        );
        assert!(s.contains("sz_run vmlinux-pvh plain 'run' '--kernel' '/l2/vmlinux' "));
    }
}
