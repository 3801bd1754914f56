//! A CRD applied with kubectl is served, and server-side dry-run validates
//! against its schema without persisting anything.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::Path;
use std::process::Output;

use kube::api::{Api, DynamicObject, GroupVersionKind};
use kube::discovery::ApiResource;
use squall_testenv::ControlPlane;

fn data(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
        .display()
        .to_string()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn crd_is_served_and_server_side_dry_run_works() {
    let cp = ControlPlane::start().await.unwrap();

    let o = cp
        .kubectl()
        .args(["apply", "-f", &data("widget-crd.yaml")])
        .output()
        .unwrap();
    assert!(o.status.success(), "apply CRD: {}", text(&o));
    let o = cp
        .kubectl()
        .args([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/widgets.testenv.squall.dev",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "CRD not established: {}", text(&o));

    // Dry-run of a valid object: accepted, not persisted.
    let o = cp
        .kubectl()
        .args(["apply", "--dry-run=server", "-f", &data("widget-ok.yaml")])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "dry-run of a valid widget: {}",
        text(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("server dry run"),
        "{}",
        text(&o)
    );
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("testenv.squall.dev", "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::namespaced_with(cp.client(), "default", &ar);
    assert!(
        widgets.get_opt("small").await.unwrap().is_none(),
        "a server-side dry run persisted the object"
    );

    // Dry-run of an invalid object: rejected by the CRD's schema.
    let o = cp
        .kubectl()
        .args(["apply", "--dry-run=server", "-f", &data("widget-bad.yaml")])
        .output()
        .unwrap();
    let t = text(&o);
    assert!(!o.status.success(), "invalid widget passed dry-run: {t}");
    assert!(t.contains("spec.size") && t.contains("spec.colour"), "{t}");

    // And for real: created, listed through the API by its short name too.
    let o = cp
        .kubectl()
        .args(["apply", "-f", &data("widget-ok.yaml")])
        .output()
        .unwrap();
    assert!(o.status.success(), "apply widget: {}", text(&o));
    let w = widgets.get("small").await.unwrap();
    assert_eq!(w.data["spec"]["size"], 3);
    let o = cp
        .kubectl()
        .args(["get", "wdg", "-n", "default", "-o", "name"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "widget.testenv.squall.dev/small",
        "{}",
        text(&o)
    );
}
