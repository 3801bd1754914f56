//! The supervisor sidecar: generic, no user code.
//!
//! It holds an etcd lease as the worker's heartbeat and keeps the worker's
//! registration (`workers/<slot>`) under it; it checks the worker over
//! localhost every second and publishes its stats (`stats/<slot>`); and it
//! passes assignment and control changes to the worker. If etcd stays out of
//! reach past a deadline it exits non-zero, so that Kubernetes restarts it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use squall_api::invocation::EtcdTlsFiles;
use squall_api::records::{Assignment, Control, WorkerRecord, WorkerState, WorkerStats};
use tonic::transport::{Channel, Endpoint};

use super::agent::parse_state;
use crate::net::proto::worker_agent_client::WorkerAgentClient;
use crate::net::proto::{HealthRequest, Notice};
use squall_coord::{CoordError, LeaseId, TopologyStore};

/// How a supervisor runs.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    pub namespace: String,
    pub name: String,
    pub slot: u32,
    pub etcd: String,
    pub prefix: String,
    pub etcd_tls: EtcdTlsFiles,
    /// The worker's localhost agent address.
    pub agent: SocketAddr,
    /// The pod name recorded in the registration.
    pub pod: String,
    /// How often the lease is renewed (Storm: 15 s heartbeats).
    pub heartbeat: Duration,
    /// How long the lease lives without renewal (Storm: 30 s timeout).
    pub ttl: Duration,
    /// How often the worker's health is checked and its stats published.
    pub health_every: Duration,
    /// Exit non-zero when etcd has been unreachable this long.
    pub etcd_deadline: Duration,
}

/// Why a supervisor stopped.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("etcd unreachable for {0:?}: {1}")]
    EtcdUnreachable(Duration, CoordError),
    #[error(transparent)]
    Coord(#[from] CoordError),
}

/// Run until the worker has been killed through control, or forever.
pub async fn run(opts: SupervisorOptions) -> Result<(), SupervisorError> {
    let started = Instant::now();
    // Reaching etcd at all is subject to the same deadline.
    let coord = loop {
        match squall_coord::connect(&opts.etcd, &opts.etcd_tls).await {
            Ok(c) => break c,
            Err(e) if started.elapsed() >= opts.etcd_deadline => {
                return Err(SupervisorError::EtcdUnreachable(opts.etcd_deadline, e));
            }
            Err(e) => {
                tracing::warn!(error = %e, "etcd not reachable yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let store = TopologyStore::new(coord, &opts.prefix, &opts.namespace, &opts.name);
    let mut assignment = store
        .watch_key::<Assignment>(store.keys.assignment())
        .await?;
    let mut control = store.watch_key::<Control>(store.keys.control()).await?;

    let mut lease: Option<LeaseId> = None;
    let mut etcd_ok_at = Instant::now();
    let mut last_etcd_err: Option<CoordError> = None;
    let mut next_beat = Instant::now();
    let mut next_health = Instant::now();
    let mut agent: Option<WorkerAgentClient<Channel>> = None;
    let mut registered: Option<WorkerRecord> = None;
    // Whether the worker has been told the current assignment and control.
    let mut told = false;
    let mut failures = 0u32;

    loop {
        let now = Instant::now();
        // Heartbeat: keep the lease alive, or get a new one.
        if now >= next_beat {
            next_beat = now + opts.heartbeat;
            let r = match lease {
                Some(l) => store.coord.keep_alive(l).await.map(|()| l),
                None => store.coord.grant_lease(opts.ttl).await,
            };
            match r {
                Ok(l) => {
                    if lease != Some(l) {
                        tracing::info!(lease = l, "holding a new lease");
                        registered = None;
                    }
                    lease = Some(l);
                    etcd_ok_at = Instant::now();
                    last_etcd_err = None;
                }
                Err(CoordError::LeaseExpired(l)) => {
                    tracing::warn!(lease = l, "lease expired; taking a new one");
                    lease = None;
                    registered = None;
                    next_beat = now;
                    etcd_ok_at = Instant::now();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "heartbeat failed");
                    last_etcd_err = Some(e);
                }
            }
            if etcd_ok_at.elapsed() >= opts.etcd_deadline {
                let e = last_etcd_err.unwrap_or(CoordError::Timeout {
                    op: "heartbeat",
                    key: store.keys.worker(opts.slot),
                    after: opts.etcd_deadline,
                });
                return Err(SupervisorError::EtcdUnreachable(opts.etcd_deadline, e));
            }
        }

        // Health and stats.
        if now >= next_health {
            let healthy_before = failures == 0 && agent.is_some();
            let reply = check(&mut agent, opts.agent).await;
            match reply {
                Some(h) => {
                    if !healthy_before || !told {
                        told = notify(agent.as_mut(), &assignment, &control).await;
                    }
                    failures = 0;
                    let state = parse_state(&h.state);
                    let rec = WorkerRecord {
                        slot: opts.slot,
                        pod: opts.pod.clone(),
                        endpoint: h.endpoint,
                        applied_version: h.applied_version,
                        state,
                        error: (!h.error.is_empty()).then_some(h.error),
                    };
                    publish(&store, lease, &mut registered, rec).await;
                    match serde_json::from_str::<WorkerStats>(&h.stats_json) {
                        Ok(stats) => {
                            if let Err(e) = store.put_stats(&stats, None).await {
                                tracing::debug!(error = %e, "cannot publish stats");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "worker sent unreadable stats"),
                    }
                    // Poll fast until the worker runs, then at the regular pace.
                    let fast = state != WorkerState::Running;
                    next_health = Instant::now()
                        + if fast {
                            Duration::from_millis(100)
                        } else {
                            opts.health_every
                        };
                }
                None => {
                    failures += 1;
                    told = false;
                    if failures == 3 {
                        tracing::warn!("worker does not answer health checks");
                    }
                    if failures >= 3 {
                        // Peers stop sending to a dead endpoint until the worker is back.
                        // A worker that went away is restarted: it crashed, which is
                        // not a spec that cannot run. Keep the reason it gave, if any.
                        let said = registered
                            .as_ref()
                            .filter(|r| r.state == WorkerState::Crashed)
                            .and_then(|r| r.error.clone());
                        let rec = WorkerRecord {
                            slot: opts.slot,
                            pod: opts.pod.clone(),
                            endpoint: String::new(),
                            applied_version: registered.as_ref().map_or(0, |r| r.applied_version),
                            state: WorkerState::Crashed,
                            error: Some(said.unwrap_or_else(|| {
                                "the worker does not answer health checks".into()
                            })),
                        };
                        publish(&store, lease, &mut registered, rec).await;
                    }
                    next_health = Instant::now() + Duration::from_millis(100);
                }
            }
        }

        // Changes to pass on.
        let wait = next_beat
            .min(next_health)
            .saturating_duration_since(Instant::now());
        tokio::select! {
            r = assignment.changed() => {
                if r.is_err() { return Err(CoordError::WatchClosed("assignment".into()).into()) }
                told = notify(agent.as_mut(), &assignment, &control).await;
            }
            r = control.changed() => {
                if r.is_err() { return Err(CoordError::WatchClosed("control".into()).into()) }
                told = notify(agent.as_mut(), &assignment, &control).await;
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}

async fn check(
    agent: &mut Option<WorkerAgentClient<Channel>>,
    addr: SocketAddr,
) -> Option<crate::net::proto::HealthReply> {
    if agent.is_none() {
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(Duration::from_millis(500));
        *agent = Some(WorkerAgentClient::new(ep.connect().await.ok()?));
    }
    let client = agent.as_mut()?;
    match tokio::time::timeout(Duration::from_secs(1), client.health(HealthRequest {})).await {
        Ok(Ok(r)) => Some(r.into_inner()),
        _ => {
            *agent = None;
            None
        }
    }
}

async fn notify(
    agent: Option<&mut WorkerAgentClient<Channel>>,
    assignment: &tokio::sync::watch::Receiver<Option<Assignment>>,
    control: &tokio::sync::watch::Receiver<Option<Control>>,
) -> bool {
    let Some(agent) = agent else { return false };
    let a = assignment
        .borrow()
        .as_ref()
        .and_then(|a| serde_json::to_string(a).ok())
        .unwrap_or_default();
    let c = control
        .borrow()
        .as_ref()
        .and_then(|c| serde_json::to_string(c).ok())
        .unwrap_or_default();
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        agent.notify(Notice {
            assignment_json: a,
            control_json: c,
        }),
    )
    .await;
    matches!(r, Ok(Ok(_)))
}

async fn publish(
    store: &TopologyStore,
    lease: Option<LeaseId>,
    registered: &mut Option<WorkerRecord>,
    rec: WorkerRecord,
) {
    let Some(lease) = lease else { return };
    if registered.as_ref() == Some(&rec) {
        return;
    }
    match store.register_worker(&rec, lease).await {
        Ok(()) => {
            tracing::info!(endpoint = %rec.endpoint, version = rec.applied_version, state = ?rec.state, "registered worker");
            *registered = Some(rec);
        }
        Err(e) => tracing::warn!(error = %e, "cannot register the worker"),
    }
}

/// Exit code for a supervisor error: 2 when etcd stayed unreachable.
pub fn exit_code(e: &SupervisorError) -> u8 {
    match e {
        SupervisorError::EtcdUnreachable(..) => 2,
        SupervisorError::Coord(_) => 1,
    }
}
