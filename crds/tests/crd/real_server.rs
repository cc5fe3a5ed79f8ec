//! The CEL tables of `cel.rs`, run through a real kube-apiserver with `kubectl` as a user would:
//! every valid spec is accepted (`--dry-run=server`), every invalid one refused with each of its
//! messages on its field, every update refused or allowed as the table says. The client-side evaluator agreed with
//! these tables while a real server refused the whole CRD (rule cost), so the server has the
//! last word. Needs `BRIDGENET_REAL_KUBECONFIG` with the CRDs installed: run by
//! `make real-apiserver-test` (`--ignored`), never in the plain test run.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::bn_object;
use crate::cel::{Failures, invalid_specs, updates, valid_specs};

fn kubectl(args: &[&str], object: &Value) -> Output {
    let kubeconfig = std::env::var("BRIDGENET_REAL_KUBECONFIG")
        .expect("BRIDGENET_REAL_KUBECONFIG names the real API server's kubeconfig");
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(object.to_string().as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Each expected `(field, message)` must appear in kubectl's report as `field: ... message`.
fn assert_refused(what: &str, out: &Output, expected: &Failures) {
    let text = stderr(out);
    assert!(!out.status.success(), "{what} was accepted");
    for (field, message) in expected {
        assert!(
            text.lines()
                .any(|l| l.contains(&format!("{field}: ")) && l.contains(message.as_str())),
            "{what}: missing `{field}: ... {message}` in:\n{text}"
        );
    }
}

#[test]
#[ignore = "needs a real kube-apiserver (BRIDGENET_REAL_KUBECONFIG); make real-apiserver-test runs it"]
fn the_cel_tables_hold_on_a_real_api_server() {
    for (i, spec) in valid_specs().into_iter().enumerate() {
        let object = bn_object(&format!("cel-valid-{i}"), spec.clone());
        let out = kubectl(&["create", "--dry-run=server"], &object);
        assert!(out.status.success(), "{spec} refused: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("Warning"),
            "{spec}: {}",
            stderr(&out)
        );
    }
    for (i, (spec, expected)) in invalid_specs().into_iter().enumerate() {
        let object = bn_object(&format!("cel-invalid-{i}"), spec.clone());
        let out = kubectl(&["create", "--dry-run=server"], &object);
        assert_refused(&format!("create {spec}"), &out, &expected);
    }
    for (i, (old, new, expected)) in updates().into_iter().enumerate() {
        let name = format!("cel-update-{i}");
        let out = kubectl(&["apply"], &bn_object(&name, old.clone()));
        assert!(out.status.success(), "{old}: {}", stderr(&out));
        let updated = kubectl(
            &["apply", "--dry-run=server"],
            &bn_object(&name, new.clone()),
        );
        let deleted = kubectl(&["delete", "--wait=false"], &bn_object(&name, old.clone()));
        assert!(deleted.status.success(), "{}", stderr(&deleted));
        if expected.is_empty() {
            assert!(
                updated.status.success(),
                "update {old} -> {new} refused: {}",
                stderr(&updated)
            );
        } else {
            assert_refused(&format!("update {old} -> {new}"), &updated, &expected);
        }
    }
}
