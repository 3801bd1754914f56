use super::*;

#[tokio::test]
async fn memory_twin_keeps_the_contract() {
    contract::check(Arc::new(MemoryCoordinator::new()), "/test/").await;
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
    let rec = WorkerRecord {
        slot: 2,
        pod: "p".into(),
        endpoint: "127.0.0.1:1".into(),
        applied_version: 3,
        state: squall_api::records::WorkerState::Running,
        error: None,
    };
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
