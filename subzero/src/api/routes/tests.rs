use super::*;
use crate::vmm::resources::MachineConfig;

fn req(method: &str, path: &str, body: &str) -> Request {
    Request {
        method: method.into(),
        path: path.into(),
        body: body.as_bytes().to_vec(),
        keep_alive: true,
    }
}

fn fault(r: Response) -> (u16, String) {
    let v: serde_json::Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
    (r.status, v["fault_message"].as_str().unwrap().to_string())
}

#[test]
fn firecrackers_paths_map_to_actions() {
    assert_eq!(route(&req("GET", "/", "")), Ok(VmmAction::GetInstanceInfo));
    assert_eq!(
        route(&req("GET", "/vm/config", "")),
        Ok(VmmAction::GetVmConfig)
    );
    assert_eq!(
        route(&req(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 64}"#
        )),
        Ok(VmmAction::PutMachineConfig(MachineConfig {
            vcpu_count: 2,
            mem_size_mib: 64,
            ..MachineConfig::default()
        }))
    );
    assert_eq!(
        route(&req(
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#
        )),
        Ok(VmmAction::Action(ActionType::InstanceStart))
    );
    assert_eq!(
        route(&req("PATCH", "/vm", r#"{"state": "Paused"}"#)),
        Ok(VmmAction::SetVmState(VmState::Paused))
    );
    assert!(matches!(
        route(&req("PUT", "/drives/rootfs", r#"{"drive_id": "rootfs", "path_on_host": "r.img", "is_root_device": true, "is_read_only": false}"#)),
        Ok(VmmAction::PutDrive(d)) if d.drive_id == "rootfs"
    ));
    assert!(matches!(
        route(&req("PUT", "/snapshot/load", r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "File", "backend_path": "m"}, "resume_vm": true}"#)),
        Ok(VmmAction::LoadSnapshot(l)) if l.resume_vm
    ));
}

#[test]
fn bad_requests_get_400_and_a_fault_message() {
    let cases = [
        (
            req("GET", "/nope", ""),
            "Invalid request method and/or path: GET /nope.",
        ),
        (
            req("DELETE", "/", ""),
            "Invalid request method and/or path: DELETE /.",
        ),
        (
            req("PUT", "/boot-source", "{not json"),
            "An error occurred when deserializing the json body",
        ),
        (
            req(
                "PUT",
                "/boot-source",
                r#"{"kernel_image_path": "k", "colour": "red"}"#,
            ),
            "unknown field `colour`",
        ),
        (
            req("PUT", "/boot-source", ""),
            "PUT /boot-source needs a JSON body",
        ),
        (
            req("PUT", "/actions", r#"{"action_type": "Explode"}"#),
            "unknown variant `Explode`",
        ),
        (
            req(
                "PUT",
                "/drives/a",
                r#"{"drive_id": "b", "path_on_host": "x", "is_root_device": false}"#,
            ),
            "The id from the path (a) does not match the id from the body (b)!",
        ),
    ];
    for (r, needle) in cases {
        let (status, msg) = fault(route(&r).unwrap_err());
        assert_eq!(status, 400, "{msg}");
        assert!(msg.contains(needle), "{} {}: {msg}", r.method, r.path);
    }
}

#[test]
fn answers_map_to_status_codes() {
    use crate::vmm::actions::ActionError;
    assert_eq!(respond(Ok(VmmData::Empty)).status, 204);
    let ok = respond(Ok(VmmData::Json(serde_json::json!({"a": 1}))));
    assert_eq!((ok.status, ok.body.as_deref()), (200, Some(r#"{"a":1}"#)));
    assert_eq!(
        fault(respond(Err(ActionError::bad("no")))),
        (400, "no".into())
    );
    assert_eq!(
        fault(respond(Err(ActionError::internal("oops")))),
        (500, "oops".into())
    );
}
