//! The checked-in CRD must match the Rust types; regenerate with `make crds`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

#[test]
fn checked_in_crd_matches_types() {
    let generated = squall_api::crd_yaml().expect("CRD serializes");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/topology.yaml");
    let on_disk = std::fs::read_to_string(path).expect("crds/topology.yaml exists");
    assert!(
        generated == on_disk,
        "crds/topology.yaml is stale: run `make crds` and commit the result"
    );
}
