//! Worker mode: what a worker pod's `worker` container runs.
//!
//! The worker reads its slot's assignment from etcd, starts the executors of its
//! slot, serves the tuple transport, and finds its peers through the worker
//! records in etcd. Assignment and control changes reach it both from its own
//! watches and from its supervisor (applying one is idempotent by version), so
//! a worker whose supervisor lags still follows the topology.
//!
//! A new plan version (a rebalance) replaces the executors: spouts are
//! deactivated, open trees get a short time to complete, the old executors stop
//! and the new ones start. Task ids do not change across a rebalance. A spout
//! task that stays in this slot keeps its spout instance (and so its in-memory
//! state): the trees it still had open are failed to it on the way out, and it
//! replays them under the new plan, so at-least-once holds. A spout task that
//! moves to another slot moves to another process: its instance is closed here
//! and the task starts afresh where it now runs, so whatever it held in memory
//! is lost, exactly as in Storm (a real spout is backed by a durable source
//! that it replays from).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use squall_api::invocation::EtcdTlsFiles;
use squall_api::records::{Assignment, Control, WorkerState};
use squall_coord::TopologyStore;
use squall_coord::admin::Endpoints;
use tokio::sync::mpsc;

use super::agent::{AgentService, Notified, WorkerStatus};
use crate::component::Registry;
use crate::executor::ParkedSpout;
use crate::layout::Layout;
use crate::metrics::MetricsHub;
use crate::net::client::{Links, Peers};
use crate::net::codec::Schema;
use crate::net::server::{Target, TargetSlot, TransferService};
use crate::net::{self, NetConfig};
use crate::transfer::{RemoteSink, TransferConfig};
use crate::worker::Worker;

/// How a worker process runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub namespace: String,
    pub name: String,
    pub slot: u32,
    pub etcd: String,
    pub prefix: String,
    pub etcd_tls: EtcdTlsFiles,
    /// Where the tuple transport listens (port 0: any free port).
    pub listen: SocketAddr,
    /// The host peers use to reach this worker (default: the listen address's IP).
    pub advertise: Option<String>,
    /// The localhost address the supervisor talks to.
    pub agent: SocketAddr,
    pub transfer: TransferConfig,
    pub net: NetConfig,
    /// Longest a rebalance waits for open trees before cutting them off.
    pub rebalance_drain: Duration,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (the pod's probes).
    pub http: Option<SocketAddr>,
    /// The transport's mutual-TLS files (see [`crate::net::TransportTls`]);
    /// `None`: plaintext.
    pub tls_dir: Option<std::path::PathBuf>,
}

struct Running {
    worker: Worker,
    links: Arc<Links>,
    /// Every link to a peer has been up once. Spouts wait for it, so the first
    /// tuples do not meet a peer whose executors are not running yet.
    linked: bool,
    /// Broken links already passed on to the spouts (`LinkStats::lost`).
    lost_seen: u64,
}

struct State {
    opts: WorkerOptions,
    registry: Registry,
    handle: tokio::runtime::Handle,
    peers: Peers,
    tls: Option<crate::net::TransportTls>,
    target: TargetSlot,
    status: Arc<Mutex<WorkerStatus>>,
    hub: MetricsHub,
    running: Option<Running>,
    version: u64,
    control: Control,
    /// Spouts of the previous plan version, kept across a rebalance with their state.
    carried: Vec<ParkedSpout>,
}

impl State {
    fn set_status(&self, f: impl FnOnce(&mut WorkerStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn topology(&self) -> String {
        format!("{}/{}", self.opts.namespace, self.opts.name)
    }

    /// Stop the executors, giving open trees up to `drain` to complete.
    fn stop(&mut self, drain: Duration, keep_spouts: bool) {
        let Some(r) = self.running.take() else { return };
        r.worker.set_active(false);
        let deadline = Instant::now() + drain;
        while !r.worker.drained() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        *self.target.write().unwrap_or_else(|p| p.into_inner()) = None;
        r.links.close();
        if keep_spouts {
            self.carried = r.worker.shutdown_keeping_spouts();
        } else {
            r.worker.shutdown();
            self.close_carried();
        }
    }

    /// Close spouts that were parked but will not run here again.
    fn close_carried(&mut self) {
        for mut p in self.carried.drain(..) {
            tracing::warn!(
                task = p.task,
                "spout task left this worker: closing it; its in-memory state is lost"
            );
            p.spout.close();
        }
    }

    fn apply_assignment(&mut self, a: Assignment) {
        if a.version <= self.version {
            return;
        }
        tracing::info!(
            version = a.version,
            workers = a.plan.workers,
            "applying assignment"
        );
        self.set_status(|s| s.state = Some(WorkerState::Starting));
        let drain = if self.running.is_some() {
            self.opts.rebalance_drain
        } else {
            Duration::ZERO
        };
        self.stop(drain, true);
        self.version = a.version;
        let slot = self.opts.slot;
        if slot >= a.plan.workers {
            tracing::info!(
                slot,
                workers = a.plan.workers,
                "this slot is not in the plan; idle"
            );
            self.close_carried();
            self.set_status(|s| {
                s.state = Some(WorkerState::Draining);
                s.applied_version = a.version;
                s.spouts_done = true;
                s.pending = 0;
            });
            return;
        }
        match self.start(a) {
            Ok(()) => self.set_status(|s| {
                s.state = Some(WorkerState::Running);
                s.error = None;
            }),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the executors");
                self.set_status(|s| {
                    s.state = Some(WorkerState::Error);
                    s.error = Some(e.to_string());
                });
            }
        }
    }

    fn start(&mut self, a: Assignment) -> anyhow::Result<()> {
        let version = a.version;
        let workers = a.plan.workers;
        let layout = Arc::new(Layout::new(
            &a.topology.name,
            a.spec,
            a.plan,
            &self.registry.catalog(),
        )?);
        let schema = Arc::new(Schema::new(&layout));
        let links = Links::start(
            self.handle.clone(),
            &self.topology(),
            self.opts.slot,
            workers,
            version,
            schema.clone(),
            self.peers.clone(),
            self.opts.net,
            self.tls.as_ref().map(crate::net::TransportTls::client),
        );
        let remote: Arc<dyn RemoteSink> = links.clone();
        // Spout tasks that stay in this slot continue with their state; the others are closed.
        let worker = Worker::start_carrying(
            layout,
            &self.registry,
            &[self.opts.slot],
            Some(remote),
            self.opts.transfer,
            self.hub.clone(),
            std::mem::take(&mut self.carried),
        );
        let worker = match worker {
            Ok(w) => w,
            Err(e) => {
                links.close();
                return Err(e.into());
            }
        };
        *self.target.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(Target {
            version,
            inbound: worker.inbound(),
            schema,
        }));
        self.set_status(|s| s.applied_version = version);
        self.running = Some(Running {
            worker,
            links,
            linked: false,
            lost_seen: 0,
        });
        self.check_links();
        Ok(())
    }

    /// Activate the spouts once every peer link is up, and tell them when a
    /// link that was up broke (checked each loop turn, at least every 100 ms).
    fn check_links(&mut self) {
        let Some(r) = &mut self.running else { return };
        let lost = r
            .links
            .stats
            .lost
            .load(std::sync::atomic::Ordering::Relaxed);
        if lost != r.lost_seen {
            r.lost_seen = lost;
            r.worker.control.peer_lost();
        }
        if r.linked || !r.links.all_up() {
            return;
        }
        r.linked = true;
        tracing::info!("every peer link is up; spouts may emit");
        self.activate();
    }

    fn activate(&self) {
        if let Some(r) = &self.running {
            r.worker
                .set_active(r.linked && self.control.active && !self.control.killed);
        }
    }

    fn apply_control(&mut self, c: Control) {
        if c != self.control {
            tracing::info!(
                active = c.active,
                killed = c.killed,
                epoch = c.rebalance_epoch,
                "control changed"
            );
        }
        self.control = c;
        self.activate();
    }

    fn refresh_progress(&self) {
        let (pending, done) = match &self.running {
            Some(r) => (r.worker.pending() as u64, r.worker.spouts_done()),
            None => (0, true),
        };
        self.set_status(|s| {
            s.pending = pending;
            s.spouts_done = done;
        });
    }
}

/// `/metrics` for Prometheus; `/readyz` is 200 once the slot's executors run
/// (or the slot is idle in the plan); `/healthz` is 200 while the process serves.
fn admin_endpoints(
    topology: &str,
    slot: u32,
    hub: MetricsHub,
    status: Arc<Mutex<WorkerStatus>>,
) -> Endpoints {
    let topology = topology.to_string();
    let slot = slot.to_string();
    Endpoints {
        metrics: Arc::new(move || {
            hub.render_prometheus(&[("topology", topology.as_str()), ("slot", slot.as_str())])
        }),
        ready: Arc::new(
            move || match status.lock().unwrap_or_else(|p| p.into_inner()).state {
                Some(WorkerState::Running | WorkerState::Draining) => Ok(()),
                other => Err(format!("not ready: {other:?}")),
            },
        ),
    }
}

/// Run a worker until it is killed (control `killed`), or SIGTERM/SIGINT.
pub fn run(registry: Registry, opts: WorkerOptions) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("squall-net")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let interrupt = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupt.clone())
            .context("cannot install signal handler")?;
    }
    let handle = rt.handle().clone();
    let topology = format!("{}/{}", opts.namespace, opts.name);

    let (store, peers, listener, local, agent_listener) = rt.block_on(async {
        let coord = squall_coord::connect(&opts.etcd, &opts.etcd_tls)
            .await
            .with_context(|| format!("cannot reach etcd at {}", opts.etcd))?;
        let store = TopologyStore::new(coord, &opts.prefix, &opts.namespace, &opts.name);
        let peers = store
            .watch_workers()
            .await
            .context("cannot watch worker records")?;
        let (listener, local) = net::bind(opts.listen).await?;
        let (agent_listener, _) = net::bind(opts.agent).await?;
        anyhow::Ok((store, peers, listener, local, agent_listener))
    })?;
    let endpoint = format!(
        "{}:{}",
        opts.advertise
            .clone()
            .unwrap_or_else(|| local.ip().to_string()),
        local.port()
    );
    tracing::info!(%topology, slot = opts.slot, %endpoint, agent = %opts.agent, "worker starting");

    let tls = opts
        .tls_dir
        .as_deref()
        .map(crate::net::TransportTls::load)
        .transpose()?;
    tracing::info!(
        mutual_tls = tls.is_some(),
        "tuple transport: {}",
        if tls.is_some() {
            "mutual TLS"
        } else {
            "plaintext"
        }
    );
    let target: TargetSlot = Arc::new(RwLock::new(None));
    let _guard = rt.enter();
    net::serve_transfer(
        listener,
        TransferService {
            slot: opts.slot,
            topology: topology.clone(),
            target: target.clone(),
            cfg: opts.net,
            refused: Default::default(),
        },
        tls.as_ref(),
    )?;
    let status = Arc::new(Mutex::new(WorkerStatus {
        endpoint,
        ..Default::default()
    }));
    let hub = MetricsHub::new();
    if let Some(addr) = opts.http {
        let bound = squall_coord::admin::serve(
            addr,
            admin_endpoints(&topology, opts.slot, hub.clone(), status.clone()),
        )
        .with_context(|| format!("cannot serve HTTP on {addr}"))?;
        tracing::info!(%bound, "serving /metrics, /healthz, /readyz");
    }
    let (ntx, mut nrx) = mpsc::channel::<Notified>(16);
    let agent = AgentService {
        slot: opts.slot,
        status: status.clone(),
        hub: hub.clone(),
        notices: ntx.clone(),
        recent: crate::metrics::RecentWindow::default(),
    };
    rt.spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(crate::net::proto::worker_agent_server::WorkerAgentServer::new(agent))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                agent_listener,
            ))
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "supervisor channel stopped");
        }
    });
    // Our own watches on the assignment and control records.
    rt.block_on(async {
        let mut a = store.watch_key::<Assignment>(store.keys.assignment()).await?;
        let mut c = store.watch_key::<Control>(store.keys.control()).await?;
        let tx = ntx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = a.changed() => {
                        if r.is_err() { return }
                        let v = a.borrow_and_update().clone();
                        if let Some(v) = v && tx.send(Notified::Assignment(Box::new(v))).await.is_err() { return }
                    }
                    r = c.changed() => {
                        if r.is_err() { return }
                        let v = c.borrow_and_update().clone();
                        if let Some(v) = v && tx.send(Notified::Control(v)).await.is_err() { return }
                    }
                }
            }
        });
        anyhow::Ok(())
    })?;
    drop(ntx);

    let mut state = State {
        opts,
        registry,
        handle,
        peers,
        tls,
        target,
        status,
        hub,
        running: None,
        version: 0,
        control: Control::default(),
        carried: Vec::new(),
    };
    let code = loop {
        if interrupt.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::info!("signalled; stopping");
            state.stop(Duration::from_secs(2), false);
            break ExitCode::SUCCESS;
        }
        if let Some(crash) = state.running.as_ref().and_then(|r| r.worker.crashed()) {
            // The executors stopped; exit non-zero so the pod (or the launcher)
            // restarts this worker, and say why for the supervisor to report.
            state.set_status(|s| {
                s.state = Some(WorkerState::Crashed);
                s.error = Some(crash.to_string());
            });
            std::thread::sleep(Duration::from_millis(1500));
            state.stop(Duration::ZERO, false);
            break ExitCode::FAILURE;
        }
        state.check_links();
        state.refresh_progress();
        let notice = rt
            .block_on(async { tokio::time::timeout(Duration::from_millis(100), nrx.recv()).await });
        match notice {
            Ok(Some(Notified::Assignment(a))) => state.apply_assignment(*a),
            Ok(Some(Notified::Control(c))) => {
                state.apply_control(c);
                if state.control.killed {
                    let wait = state
                        .running
                        .as_ref()
                        .map_or(0, |r| r.worker.layout.spec.kill_wait_seconds);
                    tracing::info!(wait_s = wait, "topology killed; draining");
                    state.set_status(|s| s.state = Some(WorkerState::Draining));
                    state.stop(Duration::from_secs(u64::from(wait)), false);
                    state.refresh_progress();
                    // Give the supervisor a moment to publish the final stats.
                    std::thread::sleep(Duration::from_millis(1500));
                    break ExitCode::SUCCESS;
                }
            }
            Ok(None) => {
                tracing::error!("lost the watches on etcd");
                break ExitCode::FAILURE;
            }
            Err(_) => {}
        }
    };
    drop(_guard);
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(code)
}
