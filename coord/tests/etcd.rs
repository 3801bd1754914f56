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
