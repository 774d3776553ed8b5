//! The `hw-exits` scenario: hardware exit reasons seen by `perf kvm stat`
//! and by subzero's own tracing of KVM's tracepoints, for the same boot, and
//! what that tracing costs in boot time.
//!
//! Its L1 driver ([`HW_EXITS_DRIVER`], run like the API drivers, see
//! [`crate::api_scripts::driver_file`]) boots the `boot` scenario's guest
//! (kernel, initramfs, command line but for `sz_scenario=`, memory, vCPUs):
//!
//! 1. once under `perf kvm stat record -o /tmp/hw.perf.data -- subzero run
//!    ... --stats --stats-format json --stats-out /tmp/hw.json`, then prints
//!    `perf kvm -i /tmp/hw.perf.data stat report --event=vmexit
//!    --key=sample` (every reason, busiest first; Debian's perf 6.1 has no
//!    `--stdio` and takes `-i` before `stat`) between `@@L1 PERF_REPORT
//!    begin` and `... end`, and the JSON between `@@L1 STATS_JSON begin`
//!    and `... end`. perf's output goes to a file first: on L1's console (a
//!    terminal) perf starts a pager and cuts its lines to 80 columns;
//! 2. then [`BOOT_ORDER`]: the same guest with `--stats` (subzero traces
//!    exits itself) and with `--stats --no-trace`, taking turns, each
//!    between `@@L1 HW_BOOT <n> <mode> start` and `@@L1 HW_BOOT <n> <mode>
//!    end rc=<rc>`, its console on L1's. The host's timestamps give each
//!    boot's time from that start marker to the guest's `@@L2 INIT`, as the
//!    lab measures every boot ([`boots`]). Boot 0 is the one under perf.
//!
//! It prints `@@L1 STEP hw-exits ...` before each boot. Facts for the
//! host (`@@L1 CHECK hw-exits ...`): `TRACEFS_KVM` (`yes` when tracefs
//! shows `events/kvm/kvm_exit`), `RECORD_RC` and `REPORT_RC` (perf's exit
//! statuses), or `UNAVAILABLE <why>` when L1 has no perf (the host has
//! none: `apt-get install linux-perf`). `perf record`'s messages go to the
//! driver's stderr, prefixed `perf record: `; the report (which perf prints
//! on stderr) is in its section with any warnings perf gives.

use std::time::Duration;

use crate::parse::ScenarioRun;

/// The modes of the timed boots, in order: `traced` is `--stats`,
/// `no-trace` is `--stats --no-trace`. Alternating (ABBA) evens out drift
/// in L1's speed.
pub const BOOT_ORDER: &[&str] = &[
    "traced", "no-trace", "no-trace", "traced", "traced", "no-trace",
];

/// Seconds each of the driver's VMMs may run before it is killed.
pub const BOOT_TIMEOUT_SECS: u64 = 90;

/// The driver. Variables from [`crate::api_scripts::driver_file`]:
/// `SZ_KERNEL`, `SZ_INITRD`, `SZ_CMDLINE`, `SZ_MEM_MIB`, `SZ_VCPUS`.
pub const HW_EXITS_DRIVER: &str = r#"PERF=/usr/bin/perf
DATA=/tmp/hw.perf.data
JSON=/tmp/hw.json
BOOT_SECS=90
BOOT_ORDER="traced no-trace no-trace traced traced no-trace"
rm -f $DATA $JSON /tmp/hw.*

sz_tracefs
if [ -e /sys/kernel/tracing/events/kvm/kvm_exit/format ]; then sz_check TRACEFS_KVM yes; else sz_check TRACEFS_KVM no; fi

if [ -x $PERF ]; then
    sz_step "boot 0: perf kvm stat record -o $DATA -- subzero run ... --stats --stats-format json --stats-out $JSON"
    echo "@@L1 HW_BOOT 0 perf start"
    $PERF kvm stat record -o $DATA -- timeout -s KILL $BOOT_SECS /bin/subzero run --kernel "$SZ_KERNEL" \
        --initrd "$SZ_INITRD" --cmdline "$SZ_CMDLINE" --memory "${SZ_MEM_MIB}M" --vcpus "$SZ_VCPUS" \
        --stats --stats-format json --stats-out $JSON </dev/null 2>/tmp/hw.record.err
    rc=$?
    echo
    echo "@@L1 HW_BOOT 0 perf end rc=$rc"
    sz_check RECORD_RC $rc
    sed 's/^/perf record: /' /tmp/hw.record.err >&2
    sz_perf_report $DATA >/tmp/hw.report
    sz_check REPORT_RC $?
    sz_step "perf kvm stat report done"
    echo "@@L1 PERF_REPORT begin"
    cat /tmp/hw.report
    echo
    echo "@@L1 PERF_REPORT end"
    echo "@@L1 STATS_JSON begin"
    cat $JSON
    echo
    echo "@@L1 STATS_JSON end"
else
    sz_check UNAVAILABLE "$PERF is not in L1: the host has no $PERF (apt-get install linux-perf)"
fi

n=0
for mode in $BOOT_ORDER; do
    n=$((n + 1))
    if [ $mode = traced ]; then set -- --stats; else set -- --stats --no-trace; fi
    sz_step "boot $n: subzero run ... $*"
    echo "@@L1 HW_BOOT $n $mode start"
    timeout -s KILL $BOOT_SECS /bin/subzero run --kernel "$SZ_KERNEL" --initrd "$SZ_INITRD" \
        --cmdline "$SZ_CMDLINE" --memory "${SZ_MEM_MIB}M" --vcpus "$SZ_VCPUS" "$@" </dev/null 2>/tmp/hw.boot.err
    rc=$?
    echo
    echo "@@L1 HW_BOOT $n $mode end rc=$rc"
    [ $rc = 0 ] || sed "s/^/boot $n ($mode): /" /tmp/hw.boot.err >&2
done
rm -f $DATA /tmp/hw.report /tmp/hw.boot.err
"#;

/// The text between `@@L1 <name> begin` and `@@L1 <name> end` in the
/// scenario's output (what precedes the end marker on its line included),
/// or none if either marker is missing.
pub fn section(sc: &ScenarioRun, name: &str) -> Option<String> {
    let (begin, end) = (format!("@@L1 {name} begin"), format!("@@L1 {name} end"));
    let start = sc.output.iter().position(|l| l.text.contains(&begin))?;
    let mut text = String::new();
    for l in &sc.output[start + 1..] {
        if let Some(i) = l.text.find(&end) {
            text.push_str(&l.text[..i]);
            return Some(text);
        }
        text.push_str(&l.text);
        text.push('\n');
    }
    None
}

/// One of the driver's boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HwBoot {
    /// 0 for the boot under perf, then 1, 2, ...
    pub n: u32,
    /// `perf`, `traced` or `no-trace`.
    pub mode: String,
    /// subzero's exit status (perf's for boot 0); none if the boot never
    /// ended.
    pub rc: Option<i32>,
    /// Host-side time from the start marker to the guest's `@@L2 INIT`.
    pub boot: Option<Duration>,
    /// Host-side time from the start marker to the end marker.
    pub wall: Option<Duration>,
}

/// The driver's boots, in order.
pub fn boots(sc: &ScenarioRun) -> Vec<HwBoot> {
    let mut v: Vec<HwBoot> = Vec::new();
    let mut open: Option<(usize, Duration)> = None;
    for l in &sc.output {
        let Some(rest) = crate::parse::after(&l.text, "@@L1 HW_BOOT ") else {
            if let Some((i, t0)) = open {
                if v[i].boot.is_none() && l.text.contains("@@L2 INIT") {
                    v[i].boot = l.at.checked_sub(t0);
                }
            }
            continue;
        };
        let w: Vec<&str> = rest.split_whitespace().collect();
        let (Some(n), Some(mode), Some(what)) =
            (w.first().and_then(|n| n.parse().ok()), w.get(1), w.get(2))
        else {
            continue;
        };
        match *what {
            "start" => {
                v.push(HwBoot {
                    n,
                    mode: mode.to_string(),
                    rc: None,
                    boot: None,
                    wall: None,
                });
                open = Some((v.len() - 1, l.at));
            }
            "end" => {
                if let Some((i, t0)) = open.take() {
                    v[i].rc = w
                        .get(3)
                        .and_then(|r| r.strip_prefix("rc="))
                        .and_then(|r| r.parse().ok());
                    v[i].wall = l.at.checked_sub(t0);
                }
            }
            _ => {}
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{parse, Line};

    fn run(text: &str) -> ScenarioRun {
        let lines: Vec<Line> = text
            .lines()
            .enumerate()
            .map(|(i, t)| Line::new(Duration::from_millis(500 * i as u64), t))
            .collect();
        parse(&lines).scenarios.remove("hw-exits").unwrap()
    }

    const LOG: &str = "\
@@L1 BEGIN hw-exits
@@L1 START hw-exits
@@L1 CHECK hw-exits TRACEFS_KVM yes
@@L1 HW_BOOT 0 perf start
[    0.9] PCI: Fatal: No config space access function found
@@L2 INIT scenario=hw-exits
@@L2 POWEROFF

@@L1 HW_BOOT 0 perf end rc=0
@@L1 CHECK hw-exits RECORD_RC 0
@@L1 CHECK hw-exits REPORT_RC 0
@@L1 PERF_REPORT begin
Analyze events for all VMs, all VCPUs:
                 npf      29027    87.92%
@@L1 PERF_REPORT end
@@L1 STATS_JSON begin
{
  \"reasons\": []
}@@L1 STATS_JSON end
@@L1 HW_BOOT 1 traced start
@@L2 INIT scenario=hw-exits
@@L1 HW_BOOT 1 traced end rc=0
@@L1 HW_BOOT 2 no-trace start

@@L1 HW_BOOT 2 no-trace end rc=2
@@L1 HW_BOOT 3 no-trace start
@@L1 END hw-exits rc=137
@@L1 STDERR hw-exits | boot 2 (no-trace): error: unexpected argument '--no-trace' found
";

    #[test]
    fn finds_the_sections_and_times_each_boot() {
        let sc = run(LOG);
        assert_eq!(sc.l1("TRACEFS_KVM"), Some("yes"));
        assert_eq!(
            section(&sc, "PERF_REPORT").as_deref(),
            Some("Analyze events for all VMs, all VCPUs:\n                 npf      29027    87.92%\n")
        );
        assert_eq!(
            section(&sc, "STATS_JSON").as_deref(),
            Some("{\n  \"reasons\": []\n}")
        );
        assert_eq!(section(&sc, "MISSING"), None);
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(
            boots(&sc),
            [
                HwBoot {
                    n: 0,
                    mode: "perf".into(),
                    rc: Some(0),
                    boot: ms(1000),
                    wall: ms(2500)
                },
                HwBoot {
                    n: 1,
                    mode: "traced".into(),
                    rc: Some(0),
                    boot: ms(500),
                    wall: ms(1000)
                },
                HwBoot {
                    n: 2,
                    mode: "no-trace".into(),
                    rc: Some(2),
                    boot: None,
                    wall: ms(1000)
                },
                HwBoot {
                    n: 3,
                    mode: "no-trace".into(),
                    rc: None,
                    boot: None,
                    wall: None
                },
            ]
        );
        assert_eq!(
            sc.stderr,
            ["boot 2 (no-trace): error: unexpected argument '--no-trace' found"]
        );
    }

    #[test]
    fn the_driver_runs_the_boot_order_and_perf_as_documented() {
        let order = format!("BOOT_ORDER=\"{}\"\n", BOOT_ORDER.join(" "));
        assert!(HW_EXITS_DRIVER.contains(&order));
        assert!(HW_EXITS_DRIVER.contains(&format!("BOOT_SECS={BOOT_TIMEOUT_SECS}\n")));
        assert!(HW_EXITS_DRIVER.contains(
            "$PERF kvm stat record -o $DATA -- timeout -s KILL $BOOT_SECS /bin/subzero run --kernel"
        ));
        assert!(
            HW_EXITS_DRIVER.contains("--stats --stats-format json --stats-out $JSON </dev/null")
        );
        assert!(HW_EXITS_DRIVER.contains("sz_perf_report $DATA >/tmp/hw.report\n"));
    }
}
