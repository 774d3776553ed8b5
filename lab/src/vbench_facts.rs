//! What the `virtio-bench` driver ([`crate::vbench_scripts`]) printed,
//! taken apart: each boot and its rows' figures ([`boots`]), the medians
//! per row and VMM ([`summarize`]), and the table with subzero's ratios to
//! its peers ([`table`]). Every figure is a rate (MiB/s or IOPS): a ratio
//! above 1 means subzero did more.

use std::fmt::Write as _;

use crate::api_facts::median;
use crate::parse::{after, bench_figure, ScenarioRun};
use crate::vbench_scripts::ROWS;

/// The peers subzero's figures are divided by, with their short names.
const PEERS: &[(&str, &str)] = &[("firecracker", "fc"), ("qemu-microvm", "qemu")];

/// The ratios the table shows, (numerator VMM, denominator VMM, header):
/// every subzero variant in `vmms` over every peer in it, e.g.
/// `uring/fc` for `subzero-uring` / `firecracker`.
pub fn ratios(vmms: &[String]) -> Vec<(String, String, String)> {
    let mut v = Vec::new();
    for num in vmms {
        let Some(variant) = num.strip_prefix("subzero-") else {
            continue;
        };
        for (den, short) in PEERS {
            if vmms.iter().any(|x| x == den) {
                v.push((num.clone(), den.to_string(), format!("{variant}/{short}")));
            }
        }
    }
    v
}

/// One of the driver's boots.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Boot {
    /// 1, 2, ... in the order booted.
    pub seq: u32,
    /// One of [`crate::vbench_scripts::VMMS`].
    pub vmm: String,
    /// `warmup`, `round1`, ...
    pub phase: String,
    /// The VMM's exit status; none if the boot never ended.
    pub rc: Option<i32>,
    /// `exited`, `timeout` or `killed-after-reboot`.
    pub how: Option<String>,
    /// Whether the guest printed its init marker.
    pub booted: bool,
    /// Each row's `@@L2 BENCH <row>` line (lab-peer's summary or error).
    pub lines: Vec<(String, String)>,
    /// The first line of the VMM's stderr, for a boot that failed.
    pub error: Option<String>,
}

impl Boot {
    /// The row's figure (MiB/s or IOPS), if its line had one.
    pub fn figure(&self, row: &str) -> Option<f64> {
        let (_, line) = self.lines.iter().find(|(r, _)| r == row)?;
        bench_figure(line).map(|(v, _)| v)
    }

    /// Whether this is one of the timed rounds.
    pub fn timed(&self) -> bool {
        self.phase.starts_with("round")
    }
}

/// The driver's boots, in order.
pub fn boots(sc: &ScenarioRun) -> Vec<Boot> {
    let mut v: Vec<Boot> = Vec::new();
    let mut open = false;
    for l in &sc.output {
        let Some(rest) = after(&l.text, "@@L1 VB_BOOT ") else {
            let Some(b) = v.last_mut().filter(|_| open) else {
                continue;
            };
            if l.text.contains("@@L2 INIT") {
                b.booted = true;
            }
            if let Some(rest) = after(&l.text, "@@L2 BENCH ") {
                let (row, line) = rest.split_once(' ').unwrap_or((rest, ""));
                b.lines.push((row.to_string(), line.to_string()));
            }
            continue;
        };
        let w: Vec<&str> = rest.split_whitespace().collect();
        let (Some(seq), Some(vmm), Some(phase), Some(what)) = (
            w.first().and_then(|n| n.parse().ok()),
            w.get(1),
            w.get(2),
            w.get(3),
        ) else {
            continue;
        };
        match *what {
            "start" => {
                v.push(Boot {
                    seq,
                    vmm: vmm.to_string(),
                    phase: phase.to_string(),
                    ..Boot::default()
                });
                open = true;
            }
            "end" if open => {
                let field = |k: &str| w.iter().find_map(|x| x.strip_prefix(k));
                let b = v.last_mut().expect("an open boot");
                b.rc = field("rc=").and_then(|r| r.parse().ok());
                b.how = field("how=").map(str::to_string);
                open = false;
            }
            _ => {}
        }
    }
    for (k, val) in &sc.checks {
        if k != "BOOT_ERR" {
            continue;
        }
        let (seq, text) = val.split_once(' ').unwrap_or((val, ""));
        if let Some(b) = v.iter_mut().find(|b| seq.parse() == Ok(b.seq)) {
            b.error = Some(text.trim().to_string());
        }
    }
    v
}

/// The lines the driver printed as `@@L1 <marker> <seq> <line>` (marker
/// `VB_PERF` or `VB_STATS`), per boot: (seq, lines), in order.
pub fn reports(sc: &ScenarioRun, marker: &str) -> Vec<(u32, Vec<String>)> {
    let tag = format!("@@L1 {marker} ");
    let mut v: Vec<(u32, Vec<String>)> = Vec::new();
    for l in &sc.output {
        let Some(rest) = after(&l.text, &tag) else {
            continue;
        };
        let (seq, line) = rest.split_once(' ').unwrap_or((rest, ""));
        let Ok(seq) = seq.parse() else { continue };
        match v.last_mut() {
            Some((s, lines)) if *s == seq => lines.push(line.to_string()),
            _ => v.push((seq, vec![line.to_string()])),
        }
    }
    v
}

/// The VMMs the driver ran (`@@L1 CHECK virtio-bench VMMS ...`), or those
/// that booted, in order of their first boot.
pub fn vmms(sc: &ScenarioRun, boots: &[Boot]) -> Vec<String> {
    if let Some(list) = sc.l1("VMMS").filter(|l| !l.is_empty()) {
        return list.split_whitespace().map(str::to_string).collect();
    }
    let mut v: Vec<String> = Vec::new();
    for b in boots {
        if !v.contains(&b.vmm) {
            v.push(b.vmm.clone());
        }
    }
    v
}

/// Whether a failure is subzero refusing `engine=` (a subzero from before
/// the disk engines), e.g. `unknown key "engine"`.
pub fn engine_unknown(error: &str) -> bool {
    let e = error.to_lowercase();
    e.contains("engine")
        && ["unknown", "unexpected", "unrecognized", "invalid"]
            .iter()
            .any(|w| e.contains(w))
}

/// One VMM's medians.
#[derive(Debug, Clone, PartialEq)]
pub struct VmmSummary {
    /// The VMM.
    pub vmm: String,
    /// Per row of [`ROWS`], the median over the timed boots that gave a
    /// figure.
    pub medians: Vec<Option<f64>>,
    /// Per row, how many timed boots gave a figure.
    pub figures: Vec<usize>,
    /// Timed boots of this VMM.
    pub timed: usize,
    /// Boots of this VMM in every phase, and how many reached init.
    pub boots: usize,
    /// See [`VmmSummary::boots`].
    pub booted: usize,
    /// The first failed boot's first stderr line.
    pub error: Option<String>,
}

impl VmmSummary {
    /// The median of row `key`.
    pub fn median(&self, key: &str) -> Option<f64> {
        let i = ROWS.iter().position(|(k, _, _)| *k == key)?;
        self.medians[i]
    }
}

/// One summary per VMM in `vmms`.
pub fn summarize(boots: &[Boot], vmms: &[String]) -> Vec<VmmSummary> {
    vmms.iter()
        .map(|vmm| {
            let all: Vec<&Boot> = boots.iter().filter(|b| &b.vmm == vmm).collect();
            let timed: Vec<&Boot> = all.iter().copied().filter(|b| b.timed()).collect();
            let per_row: Vec<Vec<f64>> = ROWS
                .iter()
                .map(|(key, _, _)| timed.iter().filter_map(|b| b.figure(key)).collect())
                .collect();
            VmmSummary {
                vmm: vmm.clone(),
                medians: per_row.iter().map(|v| median(v)).collect(),
                figures: per_row.iter().map(Vec::len).collect(),
                timed: timed.len(),
                boots: all.len(),
                booted: all.iter().filter(|b| b.booted).count(),
                error: all
                    .iter()
                    .find(|b| b.rc != Some(0) && b.error.is_some())
                    .and_then(|b| b.error.clone()),
            }
        })
        .collect()
}

fn fmt_figure(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "-".into(),
        Some(v) if unit == "IOPS" => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

fn fmt_ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

/// Row `i`'s ratio `num / den` of medians, when both exist.
fn ratio(s: &[VmmSummary], i: usize, num: &str, den: &str) -> Option<f64> {
    let m = |vmm: &str| s.iter().find(|v| v.vmm == vmm).and_then(|v| v.medians[i]);
    let (a, b) = (m(num)?, m(den)?);
    (b > 0.0).then(|| a / b)
}

/// The table: per row each VMM's median and the [`ratios`], then the
/// median of each ratio over the rows, then what failed.
pub fn table(s: &[VmmSummary]) -> String {
    let names: Vec<String> = s.iter().map(|v| v.vmm.clone()).collect();
    let shown = ratios(&names);
    let mut out = format!("  {:<34}", "row (unit)");
    for v in s {
        let _ = write!(out, " {:>14}", v.vmm);
    }
    for (_, _, h) in &shown {
        let _ = write!(out, " {h:>10}");
    }
    out.push('\n');
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); shown.len()];
    for (i, (_, what, unit)) in ROWS.iter().enumerate() {
        let _ = write!(out, "  {:<34}", format!("{what} ({unit})"));
        for v in s {
            let _ = write!(out, " {:>14}", fmt_figure(v.medians[i], unit));
        }
        for (j, (num, den, _)) in shown.iter().enumerate() {
            let r = ratio(s, i, num, den);
            ratios[j].extend(r);
            let _ = write!(out, " {:>10}", fmt_ratio(r));
        }
        out.push('\n');
    }
    let _ = write!(out, "  {:<34}", "median of the rows' ratios");
    for _ in s {
        let _ = write!(out, " {:>14}", "");
    }
    for r in &ratios {
        let _ = write!(out, " {:>10}", fmt_ratio(median(r)));
    }
    out.push('\n');
    for v in s {
        if v.booted < v.boots {
            let _ = writeln!(
                out,
                "  {}: {} of {} boots failed: {}",
                v.vmm,
                v.boots - v.booted,
                v.boots,
                v.error.as_deref().unwrap_or("(no stderr line)")
            );
        }
        let short: Vec<String> = ROWS
            .iter()
            .zip(&v.figures)
            .filter(|(_, n)| **n < v.timed)
            .map(|((k, _, _), n)| format!("{k} {n}/{}", v.timed))
            .collect();
        if !short.is_empty() && v.booted > 0 {
            let _ = writeln!(
                out,
                "  {}: figures from fewer than all timed boots: {}",
                v.vmm,
                short.join(", ")
            );
        }
    }
    out
}

/// Every boot on one line: its phase, VMM, exit and each row's figure; a
/// row whose line had no figure is shown with what lab-peer printed.
pub fn boot_list(boots: &[Boot]) -> String {
    let mut s = format!(
        "  {:>3} {:<7} {:<13} {:>4} {:<19}",
        "#", "phase", "VMM", "rc", "how"
    );
    for (k, _, _) in ROWS {
        let _ = write!(s, " {:>15}", k);
    }
    s.push('\n');
    for b in boots {
        let _ = write!(
            s,
            "  {:>3} {:<7} {:<13} {:>4} {:<19}",
            b.seq,
            b.phase,
            b.vmm,
            b.rc.map_or_else(|| "-".into(), |r| r.to_string()),
            b.how.as_deref().unwrap_or("-"),
        );
        for (k, _, unit) in ROWS {
            let _ = write!(s, " {:>15}", fmt_figure(b.figure(k), unit));
        }
        s.push('\n');
        if let Some(e) = b.error.as_deref().filter(|_| b.rc != Some(0)) {
            let _ = writeln!(s, "      stderr: {e}");
        }
        for (row, line) in b.lines.iter().filter(|(_, l)| bench_figure(l).is_none()) {
            let _ = writeln!(s, "      {row}: {line}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::Line;
    use std::time::Duration;

    fn boot_lines(seq: u32, vmm: &str, phase: &str, scale: f64) -> Vec<String> {
        let mut v = vec![
            format!("@@L1 VB_BOOT {seq} {vmm} {phase} start"),
            "@@L2 INIT scenario=virtio-bench".into(),
        ];
        for (i, (k, _, unit)) in ROWS.iter().enumerate() {
            let x = (i + 1) as f64 * 10.0 * scale;
            v.push(match *unit {
                "IOPS" => format!("@@L2 BENCH {k} rand read /dev/vda: 9 reads of 4096 bytes at qd 1 in 3.000s: {x:.0} IOPS"),
                _ => format!("@@L2 BENCH {k} seq read /dev/vda: 67108864 bytes in 1.000s: {x:.1} MiB/s"),
            });
        }
        v.push(format!(
            "@@L1 VB_BOOT {seq} {vmm} {phase} end rc=0 how=exited"
        ));
        v
    }

    fn run() -> ScenarioRun {
        let mut text = vec![
            "@@L1 BEGIN virtio-bench".to_string(),
            "@@L1 CHECK virtio-bench VMMS subzero-sync subzero-uring firecracker qemu-microvm"
                .into(),
        ];
        let mut seq = 0;
        for phase in ["warmup", "round1", "round2", "round3"] {
            for (vmm, scale) in [
                ("subzero-uring", 2.0),
                ("firecracker", 1.0),
                ("qemu-microvm", 4.0),
            ] {
                seq += 1;
                // A warm-up far off that the medians must leave out.
                let scale = if phase == "warmup" { 100.0 } else { scale };
                text.extend(boot_lines(seq, vmm, phase, scale));
            }
            seq += 1;
            text.push(format!("@@L1 VB_BOOT {seq} subzero-sync {phase} start"));
            text.push(format!(
                "@@L1 VB_BOOT {seq} subzero-sync {phase} end rc=1 how=exited"
            ));
            text.push(format!("@@L1 CHECK virtio-bench BOOT_ERR {seq} error: invalid value 'path=/tmp/bench.img,engine=sync' for '--disk': unknown key \"engine\"; known keys: path"));
        }
        let output: Vec<Line> = text
            .iter()
            .enumerate()
            .map(|(i, t)| Line::new(Duration::from_millis(i as u64), t.clone()))
            .collect();
        crate::parse::parse(&output)
            .scenarios
            .remove("virtio-bench")
            .unwrap()
    }

    #[test]
    fn reports_are_grouped_by_boot() {
        let text = [
            "@@L1 BEGIN virtio-bench",
            "@@L1 VB_PERF 1 Analyze events for all VMs, all VCPUs:",
            "@@L1 VB_PERF 1        npf      632",
            "@@L1 VB_STATS 1 == subzero stats ==",
            "@@L1 VB_PERF 2        msr     3000",
            "@@L1 VB_PERF x junk",
        ];
        let output: Vec<Line> = text
            .iter()
            .enumerate()
            .map(|(i, t)| Line::new(Duration::from_millis(i as u64), t.to_string()))
            .collect();
        let sc = crate::parse::parse(&output)
            .scenarios
            .remove("virtio-bench")
            .unwrap();
        let r = reports(&sc, "VB_PERF");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0, 1);
        assert_eq!(
            r[0].1,
            [
                "Analyze events for all VMs, all VCPUs:",
                "       npf      632"
            ]
        );
        assert_eq!(r[1], (2, vec!["       msr     3000".to_string()]));
        assert_eq!(reports(&sc, "VB_STATS")[0].1, ["== subzero stats =="]);
    }

    #[test]
    fn every_subzero_variant_is_divided_by_every_peer_present() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let r = ratios(&names(&[
            "subzero-uring",
            "subzero-uring-q1",
            "firecracker",
        ]));
        let heads: Vec<&str> = r.iter().map(|(_, _, h)| h.as_str()).collect();
        assert_eq!(heads, ["uring/fc", "uring-q1/fc"]);
        assert_eq!(
            (r[1].0.as_str(), r[1].1.as_str()),
            ("subzero-uring-q1", "firecracker")
        );
        assert!(ratios(&names(&["subzero-sync", "subzero-uring"])).is_empty());
    }

    #[test]
    fn each_boot_has_its_rows_and_a_failed_one_its_reason() {
        let sc = run();
        let b = boots(&sc);
        assert_eq!(b.len(), 16);
        assert_eq!(
            (b[0].vmm.as_str(), b[0].phase.as_str()),
            ("subzero-uring", "warmup")
        );
        assert!(b[0].booted && b[0].rc == Some(0));
        assert_eq!(b[0].figure("seq-write"), Some(1000.0));
        assert_eq!(b[0].figure("rand-read-qd1"), Some(3000.0));
        let failed = &b[3];
        assert_eq!(failed.vmm, "subzero-sync");
        assert!(!failed.booted && failed.lines.is_empty());
        assert!(engine_unknown(failed.error.as_deref().unwrap()));
        assert!(!engine_unknown("KVM_CREATE_VM: Cannot allocate memory"));
        assert_eq!(
            vmms(&sc, &b),
            [
                "subzero-sync",
                "subzero-uring",
                "firecracker",
                "qemu-microvm"
            ]
        );
    }

    #[test]
    fn the_table_has_medians_ratios_and_their_median() {
        let sc = run();
        let b = boots(&sc);
        let s = summarize(&b, &vmms(&sc, &b));
        let uring = &s[1];
        assert_eq!(uring.timed, 3);
        assert_eq!(uring.median("seq-write"), Some(20.0));
        assert_eq!(uring.median("tcp-h2g"), Some(160.0));
        assert_eq!(s[0].median("seq-write"), None);
        assert_eq!((s[0].boots, s[0].booted), (4, 0));
        let t = table(&s);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].contains("uring/fc") && lines[0].contains("sync/qemu"),
            "{t}"
        );
        let seq_write = lines[1].split_whitespace().collect::<Vec<_>>();
        // subzero-sync -, subzero-uring 20.0, firecracker 10.0, qemu 40.0,
        // then sync/fc -, sync/qemu -, uring/fc 2.00, uring/qemu 0.50.
        assert_eq!(
            seq_write[seq_write.len() - 8..],
            ["-", "20.0", "10.0", "40.0", "-", "-", "2.00", "0.50"],
            "{t}"
        );
        let tail = |l: &str, n: usize| {
            let w: Vec<String> = l.split_whitespace().map(str::to_string).collect();
            w[w.len() - n..].to_vec()
        };
        assert_eq!(
            tail(lines[3], 8),
            ["-", "60", "30", "120", "-", "-", "2.00", "0.50"],
            "{t}"
        );
        let med = lines
            .iter()
            .find(|l| l.contains("median of the rows' ratios"))
            .unwrap();
        assert_eq!(tail(med, 5), ["ratios", "-", "-", "2.00", "0.50"], "{t}");
        assert!(
            t.contains("subzero-sync: 4 of 4 boots failed: error: invalid value"),
            "{t}"
        );
        let list = boot_list(&b);
        assert!(list.contains("stderr: error: invalid value"), "{list}");
    }
}
