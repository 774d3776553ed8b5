//! What the `boot-bench` driver ([`crate::boot_scripts`]) printed, taken
//! apart: each boot ([`boots`]), the benchmark's table of medians
//! ([`summarize`], [`table`]), the diagnostic boots' kernel timings
//! ([`diag`], [`diag_side_by_side`]) and the two `perf kvm stat` reports
//! side by side ([`perf_side_by_side`]).

use std::fmt::Write as _;
use std::time::Duration;

use crate::api_facts::median;
use crate::boot_scripts::{DMESG_KEYS, GUEST_DECOMPRESS, GUEST_DECOMPRESS_FLAG, ROUNDS};
use crate::parse::{after, ScenarioRun};
use crate::perf::PerfReport;

/// What L1 read from a VMM's `/proc/<pid>/smaps` while its guest held at
/// init: `mem=<own_kb>,<guest_kb>,<guest_maps>,<maps>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mem {
    /// Rss of every mapping but guest RAM, in KiB.
    pub own_kb: u64,
    /// Rss of the guest RAM mapping(s), in KiB.
    pub guest_kb: u64,
    /// How many mappings were taken for guest RAM (1 expected).
    pub guest_maps: u32,
    /// All mappings.
    pub maps: u32,
}

impl Mem {
    /// Parses `own,guest,guest_maps,maps`; `none` (no sample) is `None`.
    pub fn parse(s: &str) -> Option<Mem> {
        let v: Vec<u64> = s
            .split(',')
            .map(|w| w.parse().ok())
            .collect::<Option<_>>()?;
        match v[..] {
            [own_kb, guest_kb, guest_maps, maps] => Some(Mem {
                own_kb,
                guest_kb,
                guest_maps: guest_maps as u32,
                maps: maps as u32,
            }),
            _ => None,
        }
    }

    /// The VMM's own memory, in MiB.
    pub fn own_mib(&self) -> f64 {
        self.own_kb as f64 / 1024.0
    }
}

/// One of the driver's boots.
#[derive(Debug, Clone, PartialEq)]
pub struct Boot {
    /// 1, 2, ... in the order booted.
    pub seq: u32,
    /// `subzero`, `subzero-guest-decompress`, `firecracker`, `qemu-microvm`.
    pub vmm: String,
    /// `warmup`, `round1`... , `diag` or `perf`.
    pub phase: String,
    /// The VMM's exit status (perf's for `perf`); none if the boot never
    /// ended.
    pub rc: Option<i32>,
    /// `exited`, `timeout` or `killed-after-reboot`.
    pub how: Option<String>,
    /// Host-side time from the start marker to the guest's `@@L2 INIT`.
    pub total: Option<Duration>,
    /// The guest's `/proc/uptime` at init (`@@L2 UPTIME`), in seconds.
    pub kernel_to_init: Option<f64>,
    /// The memory sample.
    pub mem: Option<Mem>,
    /// Host-side time from the start marker to the end marker.
    pub wall: Option<Duration>,
    /// The first line of the VMM's stderr, for a boot that failed.
    pub error: Option<String>,
    /// The console lines between the markers.
    pub console: Vec<String>,
}

impl Boot {
    /// Total less kernel-to-init: loading, and whatever the guest ran
    /// before the kernel's clock started (the bzImage's decompressor).
    pub fn before_kernel(&self) -> Option<f64> {
        Some(self.total?.as_secs_f64() - self.kernel_to_init?)
    }

    /// Whether the guest reached its init marker.
    pub fn booted(&self) -> bool {
        self.total.is_some()
    }

    /// The value of the first `@@L2 <key> <value>` console line.
    pub fn l2(&self, key: &str) -> Option<&str> {
        let marker = format!("@@L2 {key} ");
        self.console.iter().find_map(|l| after(l, &marker))
    }
}

/// The driver's boots, in order.
pub fn boots(sc: &ScenarioRun) -> Vec<Boot> {
    let mut v: Vec<Boot> = Vec::new();
    let mut open: Option<(usize, Duration)> = None;
    for l in &sc.output {
        let Some(rest) = after(&l.text, "@@L1 BB_BOOT ") else {
            if let Some((i, t0)) = open {
                let b = &mut v[i];
                if b.total.is_none() && l.text.contains("@@L2 INIT") {
                    b.total = l.at.checked_sub(t0);
                }
                if b.kernel_to_init.is_none() {
                    b.kernel_to_init = after(&l.text, "@@L2 UPTIME ").and_then(|u| u.parse().ok());
                }
                b.console.push(l.text.clone());
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
                    rc: None,
                    how: None,
                    total: None,
                    kernel_to_init: None,
                    mem: None,
                    wall: None,
                    error: None,
                    console: Vec::new(),
                });
                open = Some((v.len() - 1, l.at));
            }
            "end" => {
                if let Some((i, t0)) = open.take() {
                    let field = |k: &str| w.iter().find_map(|x| x.strip_prefix(k));
                    let b = &mut v[i];
                    b.rc = field("rc=").and_then(|r| r.parse().ok());
                    b.how = field("how=").map(str::to_string);
                    b.mem = field("mem=").and_then(Mem::parse);
                    b.wall = l.at.checked_sub(t0);
                }
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

/// The VMMs the driver ran (`@@L1 CHECK boot-bench VMMS ...`), or those
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

/// Whether a failure is subzero rejecting [`GUEST_DECOMPRESS_FLAG`] (a
/// subzero from before host-side decompression).
pub fn flag_unknown(error: &str) -> bool {
    let e = error.to_lowercase();
    e.contains(GUEST_DECOMPRESS_FLAG)
        && [
            "unexpected argument",
            "unknown",
            "unrecognized",
            "wasn't expected",
        ]
        .iter()
        .any(|w| e.contains(w))
}

/// One VMM's line of the benchmark's table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The VMM.
    pub vmm: String,
    /// Each timed round, in round order: its boot's total (start to init
    /// marker, seconds), `Some(None)` if that boot never reached init,
    /// `None` if there was no boot.
    pub rounds: Vec<Option<Option<f64>>>,
    /// Medians over the timed rounds' boots that reached init, in seconds.
    pub median_total: Option<f64>,
    /// See [`Row::median_total`].
    pub median_before_kernel: Option<f64>,
    /// See [`Row::median_total`].
    pub median_kernel_to_init: Option<f64>,
    /// Median memory overhead over the timed rounds, in MiB.
    pub median_mem_mib: Option<f64>,
    /// Boots of this VMM in every phase, and how many reached init.
    pub boots: usize,
    /// See [`Row::boots`].
    pub booted: usize,
    /// The first failed boot's first stderr line.
    pub error: Option<String>,
}

/// The table's rows, one per VMM in `vmms`.
pub fn summarize(boots: &[Boot], vmms: &[String]) -> Vec<Row> {
    vmms.iter()
        .map(|vmm| {
            let all: Vec<&Boot> = boots.iter().filter(|b| &b.vmm == vmm).collect();
            let timed: Vec<&Boot> = all
                .iter()
                .copied()
                .filter(|b| b.phase.starts_with("round") && b.booted())
                .collect();
            let med = |f: &dyn Fn(&Boot) -> Option<f64>| {
                median(&timed.iter().filter_map(|b| f(b)).collect::<Vec<_>>())
            };
            Row {
                vmm: vmm.clone(),
                rounds: (1..=ROUNDS)
                    .map(|r| {
                        let phase = format!("round{r}");
                        all.iter()
                            .find(|b| b.phase == phase)
                            .map(|b| b.total.map(|t| t.as_secs_f64()))
                    })
                    .collect(),
                median_total: med(&|b| b.total.map(|t| t.as_secs_f64())),
                median_before_kernel: med(&|b| b.before_kernel()),
                median_kernel_to_init: med(&|b| b.kernel_to_init),
                median_mem_mib: med(&|b| b.mem.map(|m| m.own_mib())),
                boots: all.len(),
                booted: all.iter().filter(|b| b.booted()).count(),
                error: all
                    .iter()
                    .find(|b| !b.booted())
                    .and_then(|b| b.error.clone()),
            }
        })
        .collect()
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

/// The benchmark's table: each VMM's timed totals, the medians, its memory
/// overhead and the ratio of its median total to Firecracker's and QEMU's.
pub fn table(rows: &[Row]) -> String {
    let median_of = |vmm: &str| {
        rows.iter()
            .find(|r| r.vmm == vmm)
            .and_then(|r| r.median_total)
    };
    let (fc, qemu) = (median_of("firecracker"), median_of("qemu-microvm"));
    let mut s = format!("  {:<25}", "VMM");
    for r in 1..=ROUNDS {
        let _ = write!(s, " {:>8}", format!("round {r}"));
    }
    let _ = writeln!(
        s,
        " {:>8} {:>13} {:>14} {:>10} {:>8} {:>8}",
        "median", "before kernel", "kernel->init", "memory MiB", "/ fc", "/ qemu"
    );
    for r in rows {
        let _ = write!(s, "  {:<25}", r.vmm);
        for t in &r.rounds {
            let t = match t {
                None => "-".into(),
                Some(None) => "failed".into(),
                Some(Some(t)) => format!("{t:.2}"),
            };
            let _ = write!(s, " {t:>8}");
        }
        let ratio = |base: Option<f64>| cell(r.median_total.zip(base).map(|(t, b)| t / b), 2);
        let _ = writeln!(
            s,
            " {:>8} {:>13} {:>14} {:>10} {:>8} {:>8}",
            cell(r.median_total, 2),
            cell(r.median_before_kernel, 2),
            cell(r.median_kernel_to_init, 2),
            cell(r.median_mem_mib, 1),
            ratio(fc),
            ratio(qemu),
        );
    }
    for r in rows.iter().filter(|r| r.booted < r.boots) {
        let _ = writeln!(
            s,
            "  {}: {} of {} boots failed: {}",
            r.vmm,
            r.boots - r.booted,
            r.boots,
            r.error.as_deref().unwrap_or("(no stderr line)")
        );
    }
    s
}

/// Every boot on one line: phase, VMM, exit, total, kernel-to-init,
/// before-kernel, memory (own and guest RAM, mappings).
pub fn boot_list(boots: &[Boot]) -> String {
    let secs = |d: Option<Duration>| cell(d.map(|d| d.as_secs_f64()), 2);
    let mut s = format!(
        "  {:>3} {:<7} {:<25} {:>4} {:<20} {:>7} {:>7} {:>7} {:>7}  memory\n",
        "#", "phase", "VMM", "rc", "how", "total", "kernel", "before", "wall"
    );
    for b in boots {
        let mem = b.mem.map_or_else(
            || "-".to_string(),
            |m| {
                format!(
                    "own {:.1} MiB, guest RAM {:.1} MiB resident in {} of {} mappings",
                    m.own_mib(),
                    m.guest_kb as f64 / 1024.0,
                    m.guest_maps,
                    m.maps
                )
            },
        );
        let _ = writeln!(
            s,
            "  {:>3} {:<7} {:<25} {:>4} {:<20} {:>7} {:>7} {:>7} {:>7}  {mem}",
            b.seq,
            b.phase,
            b.vmm,
            b.rc.map_or_else(|| "-".into(), |r| r.to_string()),
            b.how.as_deref().unwrap_or("-"),
            secs(b.total),
            cell(b.kernel_to_init, 2),
            cell(b.before_kernel(), 2),
            secs(b.wall),
        );
        if let Some(e) = b.error.as_deref().filter(|_| !b.booted()) {
            let _ = writeln!(s, "      stderr: {e}");
        }
    }
    s
}

/// The largest mappings outside guest RAM that the driver listed for a
/// boot (round 1 only): (Rss KiB, anonymous huge pages KiB, size KiB, name).
pub fn maps(boot: &Boot) -> Vec<(u64, u64, u64, String)> {
    boot.console
        .iter()
        .filter_map(|l| after(l, "@@L1 BB_MAP "))
        .filter_map(|rest| {
            let mut w = rest.splitn(4, ' ');
            let mut num = || w.next()?.trim().parse().ok();
            let (rss, thp, size) = (num()?, num()?, num()?);
            Some((rss, thp, size, w.next().unwrap_or("").trim().to_string()))
        })
        .collect()
}

/// What a diagnostic boot's guest printed from `dmesg`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diag {
    /// The longest initcalls, longest first: (usecs, function, return value).
    pub initcalls: Vec<(u64, String, String)>,
    /// The sum of all initcalls' times, in usecs, and their count.
    pub total_us: Option<u64>,
    /// See [`Diag::total_us`].
    pub count: Option<u64>,
    /// (key of [`DMESG_KEYS`], dmesg timestamp in seconds, the line).
    pub stamps: Vec<(String, String, String)>,
    /// Lines `dmesg` gave.
    pub dmesg_lines: Option<u64>,
    /// The first CPU's flags in /proc/cpuinfo.
    pub cpu_flags: Option<Vec<String>>,
    /// (vulnerability, the kernel's status line) from sysfs.
    pub vulns: Vec<(String, String)>,
}

/// The diagnostic facts of a boot.
pub fn diag(boot: &Boot) -> Diag {
    let mut d = Diag::default();
    for l in &boot.console {
        if let Some(rest) = after(l, "@@L2 INITCALL_TOTAL ") {
            let mut w = rest.split_whitespace();
            d.total_us = w.next().and_then(|v| v.parse().ok());
            d.count = w.next().and_then(|v| v.parse().ok());
        } else if let Some(rest) = after(l, "@@L2 INITCALL ") {
            let w: Vec<&str> = rest.split_whitespace().collect();
            if let [us, func, ret] = w[..] {
                if let Ok(us) = us.parse() {
                    let ret = ret.strip_prefix("ret=").unwrap_or(ret);
                    d.initcalls.push((us, func.to_string(), ret.to_string()));
                }
            }
        } else if let Some(rest) = after(l, "@@L2 DMESG_AT ") {
            let mut it = rest.splitn(3, ' ');
            if let (Some(k), Some(ts)) = (it.next(), it.next()) {
                d.stamps
                    .push((k.into(), ts.into(), it.next().unwrap_or("").trim().into()));
            }
        } else if let Some(rest) = after(l, "@@L2 DMESG_LINES ") {
            d.dmesg_lines = rest.trim().parse().ok();
        } else if let Some(rest) = after(l, "@@L2 CPU_FLAGS ") {
            d.cpu_flags = Some(rest.split_whitespace().map(String::from).collect());
        } else if let Some(rest) = after(l, "@@L2 VULN ") {
            let (name, status) = rest.split_once(' ').unwrap_or((rest, ""));
            d.vulns.push((name.into(), status.trim().into()));
        }
    }
    d
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('~');
        t
    }
}

/// Two diagnostic boots side by side: the dmesg timestamps of the
/// [`DMESG_KEYS`] lines, the 15 longest initcalls, and all initcalls' total.
pub fn diag_side_by_side(names: [&str; 2], d: [&Diag; 2]) -> String {
    const W: usize = 58;
    let mut s = format!("  {:<14} {:<W$} {}\n", "dmesg at (s)", names[0], names[1]);
    for (key, _) in DMESG_KEYS {
        let of = |d: &Diag| -> Vec<String> {
            d.stamps
                .iter()
                .filter(|(k, _, _)| k == key)
                .map(|(_, ts, text)| clip(&format!("{ts:>10} {text}"), W))
                .collect()
        };
        let (a, b) = (of(d[0]), of(d[1]));
        for i in 0..a.len().max(b.len()).max(1) {
            let get = |v: &[String]| v.get(i).cloned().unwrap_or_else(|| "-".into());
            let _ = writeln!(
                s,
                "  {:<14} {:<W$} {}",
                if i == 0 { key } else { "" },
                get(&a),
                get(&b)
            );
        }
    }
    let _ = writeln!(s, "  {:<14} {:<W$} {}", "initcalls", names[0], names[1]);
    let n = d[0].initcalls.len().max(d[1].initcalls.len());
    for i in 0..n {
        let get = |d: &Diag| {
            d.initcalls.get(i).map_or_else(
                || "-".to_string(),
                |(us, f, ret)| {
                    let f = f.split('+').next().unwrap_or(f);
                    let ret = if ret == "0" {
                        String::new()
                    } else {
                        format!(" (ret {ret})")
                    };
                    clip(&format!("{us:>9} us  {f}{ret}"), W)
                },
            )
        };
        let _ = writeln!(
            s,
            "  {:<14} {:<W$} {}",
            format!("{:>2}", i + 1),
            get(d[0]),
            get(d[1])
        );
    }
    let total = |d: &Diag| match (d.total_us, d.count) {
        (Some(t), Some(c)) => format!("{t:>9} us in {c} initcalls"),
        _ => "-".into(),
    };
    let _ = writeln!(
        s,
        "  {:<14} {:<W$} {}",
        "all initcalls",
        total(d[0]),
        total(d[1])
    );
    let lines = |d: &Diag| d.dmesg_lines.map_or_else(|| "-".into(), |n| n.to_string());
    let _ = writeln!(
        s,
        "  {:<14} {:<W$} {}",
        "dmesg lines",
        lines(d[0]),
        lines(d[1])
    );
    s.push_str(&cpu_side_by_side(names, d));
    trim_lines(&s)
}

/// The CPU flags only one of two guests saw, and the mitigation status
/// lines that differ between them.
fn cpu_side_by_side(names: [&str; 2], d: [&Diag; 2]) -> String {
    let mut s = String::new();
    if let (Some(a), Some(b)) = (&d[0].cpu_flags, &d[1].cpu_flags) {
        for (i, (mine, theirs)) in [(a, b), (b, a)].into_iter().enumerate() {
            let only: Vec<&str> = mine
                .iter()
                .filter(|f| !theirs.contains(f))
                .map(String::as_str)
                .collect();
            let list = if only.is_empty() {
                "none".to_string()
            } else {
                only.join(" ")
            };
            let _ = writeln!(s, "  cpu flags only under {}: {list}", names[i]);
        }
    }
    let mut same = 0;
    for (name, status) in &d[0].vulns {
        let other = d[1].vulns.iter().find(|(n, _)| n == name).map(|(_, st)| st);
        if other == Some(status) {
            same += 1;
            continue;
        }
        let other = other.map_or("-", String::as_str);
        let _ = writeln!(s, "  vulnerability {name}:");
        let _ = writeln!(s, "    {:<12} {status}", names[0]);
        let _ = writeln!(s, "    {:<12} {other}", names[1]);
    }
    if !d[0].vulns.is_empty() {
        let _ = writeln!(s, "  vulnerabilities with the same status: {same}");
    }
    s
}

/// Two `perf kvm stat report` tables merged by reason (busiest first):
/// exits, share, total handling time (exits x mean) and mean, per VMM.
pub fn perf_side_by_side(names: [&str; 2], r: [Option<&PerfReport>; 2]) -> String {
    let mut reasons: Vec<(String, u64)> = Vec::new();
    for rep in r.iter().flatten() {
        for row in &rep.rows {
            match reasons.iter_mut().find(|(n, _)| *n == row.reason) {
                Some((_, m)) => *m = (*m).max(row.samples),
                None => reasons.push((row.reason.clone(), row.samples)),
            }
        }
    }
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut s = format!("  {:<16}", "");
    for n in names {
        let _ = write!(s, " {n:<38}");
    }
    let _ = write!(s, "\n  {:<16}", "reason");
    for _ in names {
        let _ = write!(
            s,
            " {:>10} {:>7} {:>10} {:>8}",
            "exits", "share", "total ms", "mean us"
        );
    }
    s.push('\n');
    for (reason, _) in &reasons {
        let _ = write!(s, "  {reason:<16}");
        for rep in r {
            match rep.and_then(|rep| rep.row(reason)) {
                Some(row) => {
                    let _ = write!(
                        s,
                        " {:>10} {:>6.2}% {:>10.1} {:>8.2}",
                        row.samples,
                        row.samples_pct,
                        row.samples as f64 * row.avg_us / 1000.0,
                        row.avg_us
                    );
                }
                None => {
                    let _ = write!(s, " {:>10} {:>7} {:>10} {:>8}", "-", "", "", "");
                }
            }
        }
        s.push('\n');
    }
    let _ = write!(s, "  {:<16}", "total");
    for rep in r {
        match rep {
            Some(rep) => {
                let n: u64 = rep.rows.iter().map(|r| r.samples).sum();
                let ms = rep
                    .total_time_us
                    .unwrap_or_else(|| rep.rows.iter().map(|r| r.samples as f64 * r.avg_us).sum())
                    / 1000.0;
                let _ = write!(s, " {:>10} {:>7} {:>10.1} {:>8}", n, "", ms, "");
            }
            None => {
                let _ = write!(s, " {:>10} {:>7} {:>10} {:>8}", "-", "", "", "");
            }
        }
    }
    s.push('\n');
    trim_lines(&s)
}

/// `s` without trailing blanks on its lines.
fn trim_lines(s: &str) -> String {
    s.lines().map(|l| format!("{}\n", l.trim_end())).collect()
}

/// Whether the test should accept that `row`'s VMM never booted: the
/// guest-decompress variant on a subzero that does not know its flag.
pub fn may_fail(row: &Row) -> bool {
    row.vmm == GUEST_DECOMPRESS && row.error.as_deref().is_some_and(flag_unknown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{parse, Line};

    /// A shortened run: two VMMs, one round's worth of markers, a failed
    /// variant, a diag boot and a perf report (times: 0.5 s per line).
    const LOG: &str = "\
@@L1 BEGIN boot-bench
@@L1 START boot-bench
@@L1 CHECK boot-bench FIRECRACKER Firecracker v1.17.0-dev
@@L1 CHECK boot-bench VMMS subzero subzero-guest-decompress firecracker qemu-microvm
@@L1 STEP boot-bench boot 1 (warmup): subzero (L1 uptime 30.1)
@@L1 BB_BOOT 1 subzero warmup start
@@L2 INIT scenario=boot-bench
@@L2 UPTIME 2.50
@@L2 HOLD
@@L2 REBOOT
@@L1 BB_BOOT 1 subzero warmup end rc=0 how=exited mem=3200,150000,1,60
@@L1 BB_BOOT 2 subzero-guest-decompress round1 start
@@L1 BB_BOOT 2 subzero-guest-decompress round1 end rc=2 how=exited mem=none
@@L1 CHECK boot-bench BOOT_ERR 2 error: unexpected argument '--no-host-decompress' found
@@L1 BB_BOOT 3 subzero round1 start
SeaBIOS (version 1.16.2)
[    0.000000] Linux version 6.1.0
@@L2 INIT scenario=boot-bench
@@L2 UPTIME 1.25
@@L1 BB_BOOT 3 subzero round1 end rc=0 how=exited mem=4096,200000,1,70
@@L1 BB_BOOT 4 firecracker round1 start
@@L1 BB_BOOT 4 firecracker round1 end rc=137 how=timeout mem=none
@@L1 BB_BOOT 5 subzero round2 start
[    0.1] i8042: PNP: No PS/2 controller found.
@@L2 INIT scenario=boot-bench
@@L2 UPTIME 0.25
@@L1 BB_MAP 2048 2048 2048 [anon]
@@L1 BB_MAP 1500 0 5200 /bin/subzero
@@L1 BB_BOOT 5 subzero round2 end rc=0 how=killed-after-reboot mem=2048,1,1,50
@@L1 BB_BOOT 6 subzero diag start
@@L2 INIT scenario=boot-bench
@@L2 UPTIME 3.00
@@L2 DMESG_AT linux-version 0.000000 Linux version 6.1.0-28-cloud-amd64 (debian-kernel@lists.debian.org)
@@L2 DMESG_AT calibration 0.004321 tsc: Detected 2994.372 MHz processor
@@L2 DMESG_AT calibration 0.120000 Calibrating delay loop (skipped), value calculated using timer frequency..
@@L2 DMESG_AT clocksource 1.500000 clocksource: Switched to clocksource kvm-clock
@@L2 INITCALL_TOTAL 2345678 1234
@@L2 INITCALL 500000 pci_subsys_init+0x0/0x80 ret=0
@@L2 INITCALL 250000 acpi_init+0x0/0x490 ret=-19
@@L2 DMESG_LINES 3100
@@L2 CPU_FLAGS  fpu vme erms x2apic
@@L2 VULN meltdown Not affected
@@L2 VULN spectre_v2 Mitigation: Retpolines; IBPB: conditional
@@L2 REBOOT
@@L1 BB_BOOT 6 subzero diag end rc=0 how=exited mem=none
@@L1 PERF_REPORT subzero begin
             VM-EXIT    Samples  Samples%     Time%    Min Time    Max Time         Avg time
                 npf        900    90.00%    80.00%     16.30us   8872.19us     20.00us ( +-   3.26% )
                  io        100    10.00%    20.00%     42.62us   5834.14us     50.00us ( +-   5.84% )

Total Samples:1000, Total events handled time:23000.00us.
@@L1 PERF_REPORT subzero end
@@L1 BB_BOOT 7 qemu-microvm round1 start
@@L1 END boot-bench rc=137
@@L1 STDERR boot-bench | boot 2 (subzero-guest-decompress): error: unexpected argument '--no-host-decompress' found
";

    fn run() -> ScenarioRun {
        let lines: Vec<Line> = LOG
            .lines()
            .enumerate()
            .map(|(i, t)| Line::new(Duration::from_millis(500 * i as u64), t))
            .collect();
        parse(&lines).scenarios.remove("boot-bench").unwrap()
    }

    #[test]
    fn each_boot_has_its_times_exit_memory_and_error() {
        let sc = run();
        let b = boots(&sc);
        assert_eq!(b.len(), 7);
        let first = &b[0];
        assert_eq!(
            (first.seq, first.vmm.as_str(), first.phase.as_str()),
            (1, "subzero", "warmup")
        );
        assert_eq!(first.rc, Some(0));
        assert_eq!(first.how.as_deref(), Some("exited"));
        assert_eq!(first.total, Some(Duration::from_millis(500)));
        assert_eq!(first.kernel_to_init, Some(2.5));
        assert_eq!(first.before_kernel(), Some(0.5 - 2.5));
        assert_eq!(first.wall, Some(Duration::from_millis(2500)));
        assert_eq!(
            first.mem,
            Some(Mem {
                own_kb: 3200,
                guest_kb: 150000,
                guest_maps: 1,
                maps: 60
            })
        );
        assert_eq!(first.console.len(), 4);
        let failed = &b[1];
        assert!(!failed.booted());
        assert_eq!((failed.rc, failed.mem), (Some(2), None));
        assert_eq!(
            failed.error.as_deref(),
            Some("error: unexpected argument '--no-host-decompress' found")
        );
        assert!(flag_unknown(failed.error.as_deref().unwrap()));
        assert!(!flag_unknown("error: --kernel: No such file or directory"));
        // Console lines before the init marker are the VMM's, and timed.
        assert_eq!(b[2].total, Some(Duration::from_millis(1500)));
        assert_eq!(b[2].console[0], "SeaBIOS (version 1.16.2)");
        assert_eq!(b[3].how.as_deref(), Some("timeout"));
        assert_eq!(b[4].how.as_deref(), Some("killed-after-reboot"));
        // The last boot never ended.
        assert_eq!((b[6].rc, b[6].wall), (None, None));
        assert_eq!(
            vmms(&sc, &b),
            [
                "subzero",
                "subzero-guest-decompress",
                "firecracker",
                "qemu-microvm"
            ]
        );
    }

    #[test]
    fn the_table_has_rounds_medians_memory_and_ratios() {
        let sc = run();
        let b = boots(&sc);
        let rows = summarize(&b, &vmms(&sc, &b));
        let sz = &rows[0];
        assert_eq!(
            sz.rounds,
            [Some(Some(1.5)), Some(Some(1.0)), None, None, None]
        );
        assert_eq!(sz.median_total, Some(1.25));
        // (1.5 - 1.25, 1.0 - 0.25): 0.25 and 0.75.
        assert_eq!(sz.median_before_kernel, Some(0.5));
        assert_eq!(sz.median_kernel_to_init, Some(0.75));
        assert_eq!(sz.median_mem_mib, Some(3.0));
        assert_eq!((sz.boots, sz.booted), (4, 4));
        let gd = &rows[1];
        assert_eq!((gd.boots, gd.booted), (1, 0));
        assert!(may_fail(gd));
        assert!(!may_fail(&rows[2]));
        let fc = &rows[2];
        assert_eq!(fc.median_total, None);
        assert_eq!(fc.error, None);
        assert_eq!(fc.rounds, [Some(None), None, None, None, None]);
        let t = table(&rows);
        let sz_line: Vec<&str> = t.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            sz_line,
            ["subzero", "1.50", "1.00", "-", "-", "-", "1.25", "0.50", "0.75", "3.0", "-", "-"]
        );
        assert!(
            t.contains("subzero-guest-decompress: 1 of 1 boots failed: error: unexpected argument")
        );
        // Ratios, with a Firecracker median.
        let mut rows = rows;
        rows[2].median_total = Some(0.5);
        rows[3].median_total = Some(2.5);
        let t = table(&rows);
        let sz_line: Vec<&str> = t.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(sz_line[10..], ["2.50", "0.50"]);
        let list = boot_list(&b);
        assert!(list.contains("stderr: error: unexpected argument"));
        assert!(list.contains("own 3.1 MiB, guest RAM 146.5 MiB resident in 1 of 60 mappings"));
    }

    #[test]
    fn the_largest_mappings_are_read_from_the_boot() {
        let sc = run();
        let b = boots(&sc);
        let m = maps(&b[4]);
        assert_eq!(
            m,
            [
                (2048, 2048, 2048, "[anon]".to_string()),
                (1500, 0, 5200, "/bin/subzero".to_string())
            ]
        );
        assert!(maps(&b[0]).is_empty());
    }

    #[test]
    fn the_diagnostic_boot_gives_initcalls_and_timestamps() {
        let sc = run();
        let b = boots(&sc);
        let d = diag(&b[5]);
        assert_eq!((d.total_us, d.count), (Some(2345678), Some(1234)));
        assert_eq!(
            d.initcalls,
            [
                (500000, "pci_subsys_init+0x0/0x80".into(), "0".into()),
                (250000, "acpi_init+0x0/0x490".into(), "-19".into())
            ]
        );
        assert_eq!(d.stamps.len(), 4);
        assert_eq!(
            d.stamps[1],
            (
                "calibration".into(),
                "0.004321".into(),
                "tsc: Detected 2994.372 MHz processor".into()
            )
        );
        assert_eq!(d.dmesg_lines, Some(3100));
        let empty = Diag::default();
        let t = diag_side_by_side(["subzero", "firecracker"], [&d, &empty]);
        let line = |start: &str| {
            t.lines()
                .find(|l| l.trim_start().starts_with(start))
                .unwrap_or_else(|| panic!("no {start} in\n{t}"))
                .to_string()
        };
        assert!(line("calibration").contains("0.004321 tsc: Detected"));
        assert!(line("clocksource").contains("1.500000 clocksource: Switched"));
        assert!(line("free-initmem").ends_with(" -"));
        assert!(line("1 ").contains("500000 us  pci_subsys_init"));
        assert!(line("2 ").contains("250000 us  acpi_init (ret -19)"));
        assert!(line("all initcalls").contains("2345678 us in 1234 initcalls"));
        // The second calibration line has a row of its own.
        assert!(t.contains("0.120000 Calibrating delay loop"));
        // CPU flags and mitigations, against a guest that saw others.
        assert_eq!(d.cpu_flags.as_deref().map(<[String]>::len), Some(4));
        let other = Diag {
            cpu_flags: Some(vec!["fpu".into(), "vme".into(), "pdpe1gb".into()]),
            vulns: vec![
                ("meltdown".into(), "Not affected".into()),
                ("spectre_v2".into(), "Mitigation: Retpolines".into()),
            ],
            ..Diag::default()
        };
        let t = diag_side_by_side(["subzero", "firecracker"], [&d, &other]);
        assert!(
            t.contains("cpu flags only under subzero: erms x2apic"),
            "{t}"
        );
        assert!(
            t.contains("cpu flags only under firecracker: pdpe1gb"),
            "{t}"
        );
        assert!(t.contains("vulnerability spectre_v2:\n    subzero      Mitigation: Retpolines; IBPB: conditional\n    firecracker  Mitigation: Retpolines\n"), "{t}");
        assert!(t.contains("vulnerabilities with the same status: 1"), "{t}");
    }

    #[test]
    fn the_perf_reports_merge_by_reason() {
        let sc = run();
        let text = crate::hw_scripts::section(&sc, "PERF_REPORT subzero").unwrap();
        let a = crate::perf::parse_report(&text).unwrap();
        let mut b = a.clone();
        b.rows.retain(|r| r.reason == "io");
        b.rows[0].samples = 2000;
        b.total_time_us = None;
        let t = perf_side_by_side(["subzero", "firecracker"], [Some(&a), Some(&b)]);
        let rows: Vec<Vec<&str>> = t
            .lines()
            .skip(2)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[0],
            ["io", "100", "10.00%", "5.0", "50.00", "2000", "10.00%", "100.0", "50.00"]
        );
        assert_eq!(rows[1], ["npf", "900", "90.00%", "18.0", "20.00", "-"]);
        assert_eq!(rows[2], ["total", "1000", "23.0", "2000", "100.0"]);
        let one = perf_side_by_side(["subzero", "firecracker"], [Some(&a), None]);
        assert!(one.lines().last().unwrap().ends_with('-'));
    }
}
