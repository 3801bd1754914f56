//! Planning is deterministic, even, and covers every task exactly once.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use proptest::prelude::*;
use squall_api::{
    ComponentSpec, Grouping, GroupingType, PhysicalPlan, PlannedKind, StreamSpec, TopologySpec,
};

fn component(id: &str, parallelism: u32, tasks: Option<u32>) -> ComponentSpec {
    ComponentSpec {
        id: id.into(),
        component: Some("X".into()),
        shell: None,
        outputs: Default::default(),
        parallelism,
        tasks,
        tick_frequency_seconds: None,
        config: Default::default(),
    }
}

fn spec(workers: u32, ackers: Option<u32>, comps: &[(u32, Option<u32>)]) -> TopologySpec {
    let mut s: TopologySpec = serde_yaml::from_str("spouts: []").expect("minimal spec");
    s.workers = workers;
    s.ackers = ackers;
    s.spouts.push(component("s", comps[0].0, comps[0].1));
    for (i, (p, t)) in comps.iter().enumerate().skip(1) {
        s.bolts.push(component(&format!("b{i}"), *p, *t));
        s.streams.push(StreamSpec {
            from: "s".into(),
            to: format!("b{i}"),
            stream: "default".into(),
            grouping: Grouping {
                kind: GroupingType::Shuffle,
                fields: vec![],
            },
        });
    }
    s
}

#[test]
fn word_count_layout() {
    let plan = PhysicalPlan::compute(&spec(3, None, &[(2, None), (4, None), (4, Some(8))]));
    // 2 + 4 + 8 user tasks, then one acker per worker.
    assert_eq!(plan.task_count(), 17);
    assert_eq!(plan.acker_tasks(), 15..18);
    assert_eq!(plan.component("b2").map(|c| c.tasks()), Some(7..15));
    assert_eq!(
        plan.component_of(15).map(|c| c.kind),
        Some(PlannedKind::Acker)
    );
    assert_eq!(plan.executors.len(), 2 + 4 + 4 + 3);
    // The 8 tasks of b2 are split 2-2-2-2 over its 4 executors.
    let b2: Vec<u32> = plan
        .executors
        .iter()
        .filter(|e| e.component == 2)
        .map(|e| e.task_count)
        .collect();
    assert_eq!(b2, vec![2, 2, 2, 2]);
}

#[test]
fn no_ackers_means_no_acker_tasks() {
    let plan = PhysicalPlan::compute(&spec(2, Some(0), &[(1, None), (1, None)]));
    assert!(plan.acker_tasks().is_empty());
    assert!(plan.components.iter().all(|c| c.kind != PlannedKind::Acker));
}

proptest! {
    #[test]
    fn every_task_in_exactly_one_executor_and_slots_balanced(
        workers in 1u32..8,
        ackers in proptest::option::of(0u32..4),
        comps in proptest::collection::vec((1u32..6, proptest::option::of(0u32..6)), 1..5),
    ) {
        let comps: Vec<(u32, Option<u32>)> = comps.into_iter().map(|(p, extra)| (p, extra.map(|e| p + e))).collect();
        let s = spec(workers, ackers, &comps);
        let plan = PhysicalPlan::compute(&s);
        prop_assert_eq!(&plan, &PhysicalPlan::compute(&s), "deterministic");

        let mut seen = vec![0u32; plan.task_count() as usize + 1];
        for e in &plan.executors {
            prop_assert!(e.task_count >= 1);
            prop_assert!(e.slot < workers);
            for t in e.tasks() { seen[t as usize] += 1; }
            let comp = &plan.components[e.component];
            prop_assert!(comp.tasks().contains(&e.first_task));
            prop_assert!(comp.tasks().contains(&(e.first_task + e.task_count - 1)));
        }
        prop_assert!(seen[1..].iter().all(|&n| n == 1), "each task in one executor");

        // Executors per slot differ by at most one.
        let mut per_slot = vec![0usize; workers as usize];
        for e in &plan.executors { per_slot[e.slot as usize] += 1; }
        let (min, max) = (per_slot.iter().min().copied().unwrap_or(0), per_slot.iter().max().copied().unwrap_or(0));
        prop_assert!(max - min <= 1, "unbalanced: {:?}", per_slot);

        // A rebalance (other worker count, same tasks) keeps task ids.
        let mut s2 = s.clone();
        s2.workers = workers + 1;
        s2.ackers = s.ackers.or(Some(s.acker_count()));
        let plan2 = PhysicalPlan::compute(&s2);
        prop_assert_eq!(&plan.components, &plan2.components);
    }
}
