//! The behaviour every [`Coordinator`] must show, as one check that this
//! crate's tests run on the in-memory twin (`src/tests.rs`) and on a real etcd
//! (`tests/etcd.rs`), so that a test passing on the twin means something.

use std::sync::Arc;
use std::time::Duration;

use crate::{Coordinator, WatchEvent};

async fn next(rx: &mut tokio::sync::mpsc::Receiver<WatchEvent>) -> WatchEvent {
    match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        Ok(Some(ev)) => ev,
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within 10s"),
    }
}

/// Panics with a message on the first broken promise. `prefix` must be unused.
pub async fn check(coord: Arc<dyn Coordinator>, prefix: &str) {
    let k = |s: &str| format!("{prefix}{s}");
    assert_eq!(coord.get(&k("a")).await.expect("get"), None);
    coord.put(&k("a"), b"1".to_vec(), None).await.expect("put");
    coord
        .put(&k("b/x"), b"2".to_vec(), None)
        .await
        .expect("put");
    assert_eq!(coord.get(&k("a")).await.expect("get"), Some(b"1".to_vec()));
    let listed = coord.list(&k("")).await.expect("list");
    assert_eq!(
        listed,
        vec![(k("a"), b"1".to_vec()), (k("b/x"), b"2".to_vec())]
    );

    let mut w = coord.watch_prefix(&k("b/")).await.expect("watch");
    assert_eq!(
        next(&mut w).await,
        WatchEvent::Snapshot(vec![(k("b/x"), b"2".to_vec())])
    );
    coord
        .put(&k("a"), b"outside".to_vec(), None)
        .await
        .expect("put");
    coord
        .put(&k("b/y"), b"3".to_vec(), None)
        .await
        .expect("put");
    assert_eq!(next(&mut w).await, WatchEvent::Put(k("b/y"), b"3".to_vec()));
    coord.delete(&k("b/x")).await.expect("delete");
    assert_eq!(next(&mut w).await, WatchEvent::Delete(k("b/x")));

    // A key under a lease goes when the lease is not kept alive.
    let lease = coord
        .grant_lease(Duration::from_secs(1))
        .await
        .expect("grant");
    coord
        .put(&k("b/leased"), b"4".to_vec(), Some(lease))
        .await
        .expect("put leased");
    assert_eq!(
        next(&mut w).await,
        WatchEvent::Put(k("b/leased"), b"4".to_vec())
    );
    coord.keep_alive(lease).await.expect("keep alive");
    assert_eq!(
        next(&mut w).await,
        WatchEvent::Delete(k("b/leased")),
        "leased key must expire"
    );
    assert!(
        coord.keep_alive(lease).await.is_err(),
        "an expired lease cannot be kept alive"
    );

    let lease = coord
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("grant");
    coord
        .put(&k("b/revoked"), b"5".to_vec(), Some(lease))
        .await
        .expect("put leased");
    assert_eq!(
        next(&mut w).await,
        WatchEvent::Put(k("b/revoked"), b"5".to_vec())
    );
    coord.revoke_lease(lease).await.expect("revoke");
    assert_eq!(next(&mut w).await, WatchEvent::Delete(k("b/revoked")));

    coord.delete_prefix(&k("")).await.expect("delete prefix");
    assert_eq!(next(&mut w).await, WatchEvent::Delete(k("b/y")));
    assert!(coord.list(&k("")).await.expect("list").is_empty());
}
