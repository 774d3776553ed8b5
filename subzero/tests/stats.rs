//! Exit statistics on this machine's /dev/kvm: the exerciser makes an exact
//! number of exits, and the report must show exactly those, under the right
//! reason and target; its JSON must match docs/stats.schema.json.

mod common;

use serde_json::Value;
use subzero::demo::guest::{self, Params, PROBE_MMIO, PROBE_PORT};
use subzero::stats::kvm::KvmStatsFds;
use subzero::stats::report::{StatsReport, SCHEMA};
use subzero::vmm::hw_trace::HwTrace;

fn run_with_stats(params: &Params) -> StatsReport {
    let vm = guest::build(params, "", Box::new(std::io::sink())).expect("build");
    let buses = vm.machine.buses.clone();
    let kvm = KvmStatsFds::open(&vm.machine.vm, &vm.machine.vcpus);
    let run = vm.machine.run().expect("run");
    StatsReport::build(
        &run.per_vcpu,
        run.elapsed,
        run.ns_per_tick,
        &buses,
        kvm.read(),
        None,
    )
}

#[test]
fn exact_counts_by_reason_and_target() {
    if !common::kvm_available() {
        return;
    }
    let report = run_with_stats(&Params {
        pio_writes: 1000,
        mmio_reads: 500,
        ..Params::new()
    });
    let reason = |name: &str| {
        report
            .exits
            .iter()
            .find(|r| r.reason == name)
            .map(|r| r.count)
    };
    // 1000 probe writes plus the power-off write.
    assert_eq!(reason("io-out"), Some(1001));
    assert_eq!(reason("mmio-read"), Some(500));
    assert_eq!(reason("io-in"), None);
    let target = |space: &str, addr: u64, access: &str| {
        report
            .targets
            .iter()
            .find(|t| t.space == space && t.addr == addr && t.access == access)
            .map(|t| (t.device.clone(), t.count))
    };
    assert_eq!(
        target("pio", u64::from(PROBE_PORT), "write"),
        Some((Some("probe".into()), 1000))
    );
    assert_eq!(
        target("mmio", PROBE_MMIO, "read"),
        Some((Some("probe".into()), 500))
    );
    assert_eq!(
        target("pio", 0x600, "write"),
        Some((Some("acpi-pm".into()), 1))
    );
    assert_eq!(report.total_exits, 1501);
    let row = report.exits.iter().find(|r| r.reason == "io-out").unwrap();
    assert!(
        row.p50_ns <= row.p99_ns && row.p99_ns <= row.max_ns,
        "{row:?}"
    );
    assert!(row.total_ns > 0);
    assert_eq!(report.vcpus.len(), 1);
    assert!(report.vcpus[0].guest_s > 0.0 && report.vcpus[0].vmm_s > 0.0);
    // Sampled RIPs: one sample every 64 exits.
    let samples: u64 = report.rips.top.iter().map(|r| r.samples).sum();
    assert_eq!(samples, 1501 / 64);
    let table = report.to_table();
    assert!(table.contains("probe 0x510"), "{table}");
}

#[test]
fn kvm_counters_sit_beside_userspace_exits() {
    if !common::kvm_available() {
        return;
    }
    let report = run_with_stats(&Params {
        pio_writes: 200,
        ..Params::new()
    });
    let kvm = report.kvm.as_ref().expect("this host has KVM_GET_STATS_FD");
    let vcpu0 = &kvm.vcpus[0];
    assert!(
        vcpu0["exits"] >= 201,
        "KVM saw at least our exits: {vcpu0:?}"
    );
    // How KVM splits them (io_exits, insn_emulation, ...) depends on the host:
    // this machine's paravirtual KVM counts port I/O as emulated instructions.
    assert!(vcpu0.contains_key("io_exits") && vcpu0.contains_key("halt_exits"));
    assert!(!kvm.vm.is_empty());
    assert!(report.to_table().contains("KVM's own counters"));
    let prom = report.to_prometheus();
    assert!(
        prom.contains("subzero_exits_total{reason=\"io-out\"} 201"),
        "{prom}"
    );
    assert!(prom.contains("subzero_kvm_vcpu_stat{vcpu=\"0\",stat=\"io_exits\"}"));
}

/// Checks `v` against the subset of JSON Schema used by docs/stats.schema.json.
fn validate(schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    if let Some(c) = schema.get("const") {
        if c != v {
            errors.push(format!("{path}: {v} != const {c}"));
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(v) {
            errors.push(format!("{path}: {v} not in {options:?}"));
        }
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_u64() || v.is_i64(),
            "number" => v.is_number(),
            "null" => v.is_null(),
            _ => false,
        });
        if !ok {
            errors.push(format!("{path}: {v} is not {types:?}"));
            return;
        }
    }
    if let Some(obj) = v.as_object() {
        for key in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !obj.contains_key(key.as_str().unwrap_or_default()) {
                errors.push(format!("{path}: missing {key}"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, child) in obj {
            let sub = props
                .and_then(|p| p.get(k))
                .or_else(|| schema.get("additionalProperties"));
            match sub {
                Some(sub) => validate(sub, child, &format!("{path}.{k}"), errors),
                None => errors.push(format!("{path}: unexpected field {k}")),
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, child) in arr.iter().enumerate() {
            validate(items, child, &format!("{path}[{i}]"), errors);
        }
    }
}

#[test]
fn json_output_parses_and_matches_its_schema() {
    if !common::kvm_available() {
        return;
    }
    let report = run_with_stats(&Params {
        pio_writes: 100,
        mmio_reads: 10,
        halts: 2,
        ..Params::new()
    });
    let mut report = report;
    // A real hardware section, traced on this host's KVM.
    let vm = guest::build(&Params::new(), "x", Box::new(std::io::sink())).expect("build");
    let mut machine = vm.machine;
    let buses = machine.buses.clone();
    let mut hw = HwTrace::start(&mut machine, true);
    machine.run().expect("run");
    hw.finish();
    report.hardware = Some(hw.report(&buses, &report.exits, None));
    let json: Value = serde_json::from_str(&report.to_json()).expect("valid JSON");
    let schema_text = include_str!("../../docs/stats.schema.json");
    let schema: Value = serde_json::from_str(schema_text).expect("schema is JSON");
    let mut errors = Vec::new();
    validate(&schema, &json, "$", &mut errors);
    assert_eq!(errors, Vec::<String>::new());
    assert_eq!(json["schema"], SCHEMA);
    // The validator itself catches a broken document.
    let mut broken = json.clone();
    broken["exits"][0]["count"] = Value::String("many".into());
    broken.as_object_mut().unwrap().remove("vcpus");
    let mut errors = Vec::new();
    validate(&schema, &broken, "$", &mut errors);
    assert_eq!(errors.len(), 2, "{errors:?}");
    // And the JSON round-trips into the report type.
    let back: StatsReport = serde_json::from_value(json).unwrap();
    assert_eq!(back, report);
}
