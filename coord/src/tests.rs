#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use squall_api::records::{WorkerRecord, WorkerState, WorkerStats};

use crate::{Coordinator, MemoryCoordinator, Store, TopologyStore, contract, corrupt_records};

#[tokio::test]
async fn memory_twin_keeps_the_contract() {
    contract::check(Arc::new(MemoryCoordinator::new()), "/test/").await;
}

fn record(slot: u32) -> WorkerRecord {
    WorkerRecord {
        slot,
        pod: "p".into(),
        endpoint: "127.0.0.1:1".into(),
        applied_version: 3,
        state: WorkerState::Running,
        error: None,
    }
}

#[tokio::test]
async fn typed_records_round_trip_and_watch() {
    let store = TopologyStore::new(Arc::new(MemoryCoordinator::new()), "/squall", "ns", "wc");
    let mut workers = store.watch_workers().await.unwrap();
    let lease = store
        .coord
        .grant_lease(Duration::from_secs(5))
        .await
        .unwrap();
    let rec = record(2);
    store.register_worker(&rec, lease).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        workers.wait_for(|m| m.get(&2) == Some(&rec)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(store.workers().await.unwrap().get(&2), Some(&rec));
    store.coord.revoke_lease(lease).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), workers.wait_for(BTreeMap::is_empty))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_corrupt_record_in_a_list_is_skipped_and_counted() {
    let coord = Arc::new(MemoryCoordinator::new());
    let store = TopologyStore::new(coord.clone(), "/squall", "ns", "wc");
    for slot in [0, 2] {
        let s = WorkerStats {
            slot,
            ..WorkerStats::default()
        };
        store.put_stats(&s, None).await.unwrap();
    }
    coord
        .put(&store.keys.stats(1), b"{not json".to_vec(), None)
        .await
        .unwrap();
    let before = corrupt_records();
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.keys().copied().collect::<Vec<_>>(), [0, 2]);
    assert!(corrupt_records() > before);
    // A record asked for by key is an error: acting without it would be wrong.
    coord
        .put(&store.keys.assignment(), b"[]".to_vec(), None)
        .await
        .unwrap();
    assert!(store.assignment().await.is_err());
}

#[tokio::test]
async fn the_store_lists_topologies_and_deletes_them() {
    let coord = Arc::new(MemoryCoordinator::new());
    let store = Store::new(coord, "/squall/");
    for (ns, name) in [("a", "x"), ("a", "y"), ("b", "x")] {
        let t = store.topology(ns, name);
        t.put_control(&Default::default()).await.unwrap();
        t.put_stats(&WorkerStats::default(), None).await.unwrap();
    }
    let all = store.topologies().await.unwrap();
    let names: Vec<(&str, &str)> = all.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(names, [("a", "x"), ("a", "y"), ("b", "x")]);
    store.topology("a", "y").delete_all().await.unwrap();
    assert_eq!(store.topologies().await.unwrap().len(), 2);
}
