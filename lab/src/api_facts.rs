//! What the API scenarios' drivers ([`crate::api_scripts`]) printed, taken
//! apart: the curl requests and their answers, each VMM process's console,
//! the guest's counter lines, and the benchmark's samples.

use std::collections::BTreeMap;

use crate::parse::{after, ScenarioRun};

/// One `@@L1 API <METHOD> <PATH> -> <status> <body>` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiCall {
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// HTTP status (0 when curl printed none).
    pub status: u16,
    /// Response body (or curl's error), on one line.
    pub body: String,
}

/// The requests the driver sent with curl, in order.
pub fn api_calls(sc: &ScenarioRun) -> Vec<ApiCall> {
    sc.output
        .iter()
        .filter_map(|l| after(&l.text, "@@L1 API "))
        .filter_map(|rest| {
            let (req, answer) = rest.split_once(" -> ")?;
            let (method, path) = req.split_once(' ')?;
            let (status, body) = answer.split_once(' ').unwrap_or((answer, ""));
            Some(ApiCall {
                method: method.to_string(),
                path: path.to_string(),
                status: status.parse().unwrap_or(0),
                body: body.trim().to_string(),
            })
        })
        .collect()
}

/// The `"state"` of each `GET /` answer, in order.
pub fn states(calls: &[ApiCall]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.method == "GET" && c.path == "/")
        .filter_map(|c| json_string(&c.body, "state"))
        .map(str::to_string)
        .collect()
}

/// The value of the string field `field` in a flat JSON object (enough for
/// the API's answers, so the lab needs no JSON crate).
pub fn json_string<'a>(body: &'a str, field: &str) -> Option<&'a str> {
    let key = format!("\"{field}\"");
    let rest = &body[body.find(&key)? + key.len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(&rest[..rest.find('"')?])
}

/// The console of the scenario's VMM process `n` (1, 2, ...): the lines
/// between `@@L1 CONSOLE <name> <n> begin` and `... end`.
pub fn console(sc: &ScenarioRun, n: u32) -> Vec<&str> {
    let begin = format!("@@L1 CONSOLE {} {n} begin", sc.name);
    let end = format!("@@L1 CONSOLE {} {n} end", sc.name);
    let mut out = Vec::new();
    let mut inside = false;
    for l in &sc.output {
        if l.text.contains(&begin) {
            inside = true;
        } else if l.text.contains(&end) {
            // A console whose last line had no newline ends on this line.
            let before = &l.text[..l.text.find(&end).unwrap_or(0)];
            if inside && !before.is_empty() {
                out.push(before);
            }
            inside = false;
        } else if inside {
            out.push(l.text.as_str());
        }
    }
    out
}

/// The value of the first `@@L2 <key> <value>` line in `lines`.
pub fn l2_in<'a>(lines: &[&'a str], key: &str) -> Option<&'a str> {
    let marker = format!("@@L2 {key} ");
    lines.iter().find_map(|l| after(l, &marker))
}

/// The guest's complete counter lines, `@@L2 COUNT <n> boot_id=<uuid>`, as
/// (n, boot id). A line cut by the pause (its rest printed after the
/// restore) is not complete, and is left out.
pub fn counts(lines: &[&str]) -> Vec<(u64, String)> {
    lines
        .iter()
        .filter_map(|l| after(l, "@@L2 COUNT "))
        .filter_map(|rest| {
            let (n, id) = rest.split_once(" boot_id=")?;
            let well_formed =
                id.len() == 36 && id.chars().all(|c| c == '-' || c.is_ascii_hexdigit());
            well_formed.then(|| Some((n.parse().ok()?, id.to_string())))?
        })
        .collect()
}

/// The benchmark's samples, `SAMPLE <vmm> <MiB> <metric> <value>`:
/// (vmm, MiB, metric) -> values, in the order taken (a `-` value, a missing
/// figure, is left out).
pub fn bench_samples(sc: &ScenarioRun) -> BTreeMap<(String, u32, String), Vec<f64>> {
    let mut m: BTreeMap<(String, u32, String), Vec<f64>> = BTreeMap::new();
    for (k, v) in &sc.checks {
        if k != "SAMPLE" {
            continue;
        }
        let w: Vec<&str> = v.split_whitespace().collect();
        if let [vmm, mib, metric, value] = w[..] {
            let entry = m
                .entry((
                    vmm.to_string(),
                    mib.parse().unwrap_or(0),
                    metric.to_string(),
                ))
                .or_default();
            if let Ok(x) = value.parse() {
                entry.push(x);
            }
        }
    }
    m
}

/// The median (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{parse, Line};
    use std::time::Duration;

    fn run(log: &str) -> ScenarioRun {
        let lines: Vec<Line> = log
            .lines()
            .enumerate()
            .map(|(i, t)| Line::new(Duration::from_millis(i as u64), t))
            .collect();
        parse(&lines).scenarios.remove("api").unwrap()
    }

    const ID: &str = "0b4c2f1e-5d6a-4e7b-8c9d-0a1b2c3d4e5f";

    #[test]
    fn calls_consoles_and_counts_are_taken_apart() {
        let log = format!(
            "@@L1 BEGIN api\n@@L1 START api\n\
             @@L1 API GET / -> 200 {{\"app_name\":\"Subzero\",\"id\":\"lab\",\"state\":\"Not started\"}}\n\
             @@L1 API PUT /boot-source -> 204 \n\
             @@L1 API PUT /snapshot/create -> 400 {{\"fault_message\":\"/tmp/api.snap already exists\"}}\n\
             @@L1 API GET / -> 000 curl: (7) Couldn't connect to server\n\
             @@L1 CONSOLE api 1 begin\n\
             @@L2 INIT scenario=api\n@@L2 BOOT_ID {ID}\n\
             @@L2 COUNT 1 boot_id={ID}\n@@L2 COUNT 2 boot_id={ID}\n@@L2 COUNT 3 boot_id=0b4c\n\
             @@L1 CONSOLE api 1 end\n\
             @@L1 CHECK api KILL_RC 137\n\
             @@L1 CONSOLE api 2 begin\n\
             f-5d6a-4e7b-8c9d-0a1b2c3d4e5f\n@@L2 COUNT 4 boot_id={ID}\n\
             @@L2 COUNTED 4@@L1 CONSOLE api 2 end\n\
             @@L1 END api rc=0\n"
        );
        let sc = run(&log);
        let calls = api_calls(&sc);
        assert_eq!(calls.len(), 4);
        assert_eq!(calls[1].method, "PUT");
        assert_eq!(calls[1].path, "/boot-source");
        assert_eq!(calls[1].status, 204);
        assert_eq!(calls[1].body, "");
        assert_eq!(calls[2].status, 400);
        assert!(calls[2].body.contains("already exists"));
        assert_eq!(calls[3].status, 0);
        assert_eq!(states(&calls), ["Not started"]);
        assert_eq!(
            json_string(&calls[2].body, "fault_message"),
            Some("/tmp/api.snap already exists")
        );
        let one = console(&sc, 1);
        assert_eq!(l2_in(&one, "BOOT_ID"), Some(ID));
        assert_eq!(counts(&one), [(1, ID.to_string()), (2, ID.to_string())]);
        let two = console(&sc, 2);
        assert_eq!(counts(&two), [(4, ID.to_string())]);
        assert_eq!(two.last(), Some(&"@@L2 COUNTED 4"));
        assert_eq!(sc.l1("KILL_RC"), Some("137"));
    }

    #[test]
    fn samples_group_by_vmm_size_and_metric() {
        let log = "@@L1 BEGIN api\n\
                   @@L1 CHECK api SAMPLE subzero 128 restore_s 0.25\n\
                   @@L1 CHECK api SAMPLE subzero 128 restore_s 0.20\n\
                   @@L1 CHECK api SAMPLE firecracker 512 restore_s -\n\
                   @@L1 CHECK api FIRECRACKER v1\n";
        let s = bench_samples(&run(log));
        assert_eq!(
            s[&("subzero".into(), 128, "restore_s".into())],
            [0.25, 0.20]
        );
        assert!(s[&("firecracker".into(), 512, "restore_s".into())].is_empty());
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
