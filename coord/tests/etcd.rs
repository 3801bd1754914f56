//! `squall-coord` against a real etcd (from the provisioned test cache): the
//! same contract the in-memory twin keeps, the corrupt-record policy, and
//! leader election.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use squall_api::records::WorkerStats;
use squall_coord::{Coordinator, EtcdCoordinator, EtcdTlsFiles, TopologyStore, contract, leader};

async fn etcd() -> (squall_testenv::Etcd, Arc<dyn Coordinator>) {
    let etcd = squall_testenv::Etcd::start().await.unwrap();
    let c = EtcdCoordinator::connect(&[etcd.client_url().to_string()], &EtcdTlsFiles::default())
        .await
        .unwrap();
    (etcd, Arc::new(c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_keeps_the_coordination_contract() {
    let (_etcd, c) = etcd().await;
    contract::check(c, "/contract-test/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_stats_record_is_skipped_not_fatal() {
    let (_etcd, c) = etcd().await;
    let store = TopologyStore::new(c.clone(), "/squall", "ns", "wc");
    store
        .put_stats(
            &WorkerStats {
                slot: 0,
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    c.put(&store.keys.stats(1), b"garbage".to_vec(), None)
        .await
        .unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.keys().copied().collect::<Vec<_>>(), [0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_a_standby_takes_over() {
    let (etcd, _) = etcd().await;
    let endpoints = [etcd.client_url().to_string()];
    let tls = EtcdTlsFiles::default();
    let ttl = Duration::from_secs(2);
    let first = leader::campaign(&endpoints, &tls, "/squall/operator/leader", "a", ttl)
        .await
        .unwrap();
    let standby = {
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            leader::campaign(
                &endpoints,
                &EtcdTlsFiles::default(),
                "/squall/operator/leader",
                "b",
                ttl,
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!standby.is_finished(), "two leaders at once");
    first.resign().await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), standby)
        .await
        .expect("the standby takes over once the leader resigns")
        .unwrap()
        .unwrap();
    second.resign().await.unwrap();
}

/// Fencing: once a leader is deposed (here it resigns, which is what its lease
/// expiring does, but it keeps its store handle as a paused process would),
/// etcd itself refuses its writes, and its successor's writes stand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_writes_are_fenced() {
    let (etcd, _) = etcd().await;
    let endpoints = [etcd.client_url().to_string()];
    let tls = EtcdTlsFiles::default();
    let key = "/squall/operator/leader";
    let ttl = Duration::from_secs(2);
    let store = || async {
        EtcdCoordinator::connect(&endpoints, &EtcdTlsFiles::default())
            .await
            .unwrap()
    };

    let a = leader::campaign(&endpoints, &tls, key, "a", ttl)
        .await
        .unwrap();
    let fence_a = a.fence();
    let as_a = store().await.fenced(fence_a.clone());
    as_a.put("/t/plan", b"from a".to_vec(), None).await.unwrap();
    as_a.put("/t/old", b"x".to_vec(), None).await.unwrap();

    a.resign().await.unwrap();
    let b = leader::campaign(&endpoints, &tls, key, "b", ttl)
        .await
        .unwrap();
    assert_ne!(b.fence(), fence_a, "a fresh fence");
    let as_b = store().await.fenced(b.fence());
    as_b.put("/t/plan", b"from b".to_vec(), None).await.unwrap();

    for refused in [
        as_a.put("/t/plan", b"stale a".to_vec(), None).await,
        as_a.delete("/t/old").await,
        as_a.delete_prefix("/t/").await,
    ] {
        let err = refused.expect_err("a deposed leader's write must fail");
        assert!(
            matches!(err, squall_coord::CoordError::Fenced { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("no longer leads"), "{err}");
    }
    assert_eq!(as_b.get("/t/plan").await.unwrap().unwrap(), b"from b");
    assert_eq!(as_b.get("/t/old").await.unwrap().unwrap(), b"x");
    as_b.delete("/t/old").await.unwrap();
    assert_eq!(as_b.get("/t/old").await.unwrap(), None);
    b.resign().await.unwrap();
}
