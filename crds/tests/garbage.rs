//! Garbage never crashes the manifest path: random bytes, and random
//! manifests of the right shape with any numbers and names, give a
//! manifest error, validation errors, or a plan within the limits. Never a
//! panic, and never a plan that breaks the limits.

use proptest::prelude::*;
use squall_api::validate::limits;
use squall_api::{PhysicalPlan, TopologySpec, validate};

/// The whole path an entry point takes: parse, validate, plan.
fn check(text: &str) -> Result<(), TestCaseError> {
    let Ok((_, spec)) = TopologySpec::from_manifest(text) else {
        return Ok(());
    };
    match validate(&spec, None) {
        Err(errs) => prop_assert!(!errs.to_string().is_empty()),
        Ok(()) => {
            let plan = PhysicalPlan::compute(&spec);
            prop_assert!(
                u64::from(plan.task_count())
                    <= limits::MAX_TOTAL_TASKS + u64::from(limits::MAX_ACKERS)
            );
            prop_assert!(plan.workers <= limits::MAX_WORKERS);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_are_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn random_manifests_are_rejected_or_planned_within_the_limits(
        workers in prop_oneof![Just(0u64), 1u64..4, Just(100_000), any::<u32>().prop_map(u64::from), Just(u64::MAX)],
        parallelism in prop_oneof![0u64..5, Just(5000), Just(u64::from(u32::MAX) + 1)],
        tasks in prop_oneof![Just(None), (0u64..10).prop_map(Some), Just(Some(1_000_000)), Just(Some(u64::from(u32::MAX)))],
        ackers in prop_oneof![Just(None), (0u64..3).prop_map(Some), Just(Some(1_000_000))],
        spout in "[a-z_]{0,3}|__acker|[a-z]{70}",
        bolt in "[a-z_]{0,3}|[\\PC]{0,8}",
        grouping in prop_oneof![Just("SHUFFLE"), Just("FIELDS"), Just("GLOBAL"), Just("BOGUS")],
        fields in "(\\[\\]|\\[w\\]|\\[w, w\\]|x)",
        timeout in prop_oneof![Just(0u64), 1u64..100, Just(u64::MAX)],
    ) {
        let ackers = ackers.map_or(String::new(), |a| format!("  ackers: {a}\n"));
        let tasks = tasks.map_or(String::new(), |t| format!(", tasks: {t}"));
        let text = format!(
            "apiVersion: squall.dev/v1alpha1\nkind: Topology\nmetadata: {{name: fuzz}}\nspec:\n  workers: {workers}\n{ackers}  messageTimeoutSeconds: {timeout}\n  spouts: [{{id: \"{spout}\", component: S, parallelism: {parallelism}{tasks}}}]\n  bolts: [{{id: {bolt:?}, component: B}}]\n  streams: [{{from: \"{spout}\", to: {bolt:?}, grouping: {{type: {grouping}, fields: {fields}}}}}]\n"
        );
        check(&text)?;
    }
}
