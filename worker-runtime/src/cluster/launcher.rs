//! The multi-process launcher: `local --processes`.
//!
//! It does on one machine what the operator and the kubelet do on Kubernetes:
//! writes the assignment and control records, starts one worker + supervisor
//! process pair per slot, restarts a process that dies (as a pod's
//! `restartPolicy: Always` would), starts pairs for new slots after a
//! rebalance and stops the pairs of slots that a rebalance removed (once they
//! have drained), and reads progress back from the stats records in etcd.
//!
//! A worker's counters live in its process, so a restarted worker reports from
//! zero again; the launcher totals them with the operator's rule,
//! [`StatsLedger`], so run totals never go down across restarts.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use squall_api::invocation::{EtcdTlsFiles, WorkerFlags, WorkerInvocation};
use squall_api::ledger::StatsLedger;
use squall_api::records::{Assignment, ComponentStats, Control, TopologyRef, WorkerStats};
use squall_api::{PlannedKind, TopologySpec};
use squall_coord::TopologyStore;

use crate::report::Summary;

/// How a multi-process run behaves.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    pub namespace: String,
    pub etcd: String,
    pub prefix: String,
    pub etcd_tls: EtcdTlsFiles,
    pub duration: Option<Duration>,
    pub report_every: Option<Duration>,
    pub table_to_stderr: bool,
    /// Where process logs and pid files go (default: a fresh temporary directory).
    pub log_dir: Option<PathBuf>,
    /// Serve the web UI here.
    pub ui_addr: Option<std::net::SocketAddr>,
    pub batch_size: usize,
    pub interrupt: Option<Arc<AtomicBool>>,
}

struct Proc {
    child: Child,
    restarts: u32,
    args: Vec<String>,
    log: PathBuf,
    pid_file: PathBuf,
}

impl Proc {
    fn spawn(
        exe: &Path,
        args: Vec<String>,
        log: PathBuf,
        pid_file: PathBuf,
    ) -> anyhow::Result<Proc> {
        let child = spawn_logged(exe, &args, &log)?;
        let _ = std::fs::write(&pid_file, child.id().to_string());
        Ok(Proc {
            child,
            restarts: 0,
            args,
            log,
            pid_file,
        })
    }
}

fn spawn_logged(exe: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))
}

struct Pair {
    worker: Proc,
    supervisor: Proc,
}

impl Pair {
    /// Ask both processes to stop (SIGTERM: the worker stops its executors and exits).
    fn terminate(&self) {
        for p in [&self.worker, &self.supervisor] {
            // The pid is ours and not reaped yet (`kill(1)`: no unsafe code for kill(2)).
            let _ = Command::new("kill")
                .args(["-TERM", &p.child.id().to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Both processes have exited (reaped).
    fn exited(&mut self) -> bool {
        let w = !matches!(self.worker.child.try_wait(), Ok(None));
        let s = !matches!(self.supervisor.child.try_wait(), Ok(None));
        w && s
    }

    fn kill(&mut self) {
        for p in [&mut self.worker, &mut self.supervisor] {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// A pair whose slot left the plan: asked to stop, killed if it lingers.
struct Retiring {
    slot: u32,
    pair: Pair,
    /// When SIGTERM was sent (`None`: still waiting for the worker to drain).
    terminated: Option<Instant>,
    /// Stop it anyway after this, drained or not.
    deadline: Instant,
}

/// A port free now, for a worker to listen on later. It is taken below the
/// kernel's ephemeral range when it can be: a port from `bind(:0)` is in
/// that range, where any outgoing connection (a test's, a kubectl's) may
/// take it before the worker binds it, and the worker then fails to listen
/// on every restart (seen in CI as "Address already in use").
fn free_port() -> anyhow::Result<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if low > 11_000 {
        let span = u32::from(low - 10_000);
        let seed = std::process::id()
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
        for i in 0..64u32 {
            let port =
                10_000 + (seed.wrapping_mul(2_654_435_761).wrapping_add(i * 7_919) % span) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

/// Run `spec` as worker processes coordinated through etcd.
pub fn run(name: &str, spec: TopologySpec, opts: &LaunchOptions) -> anyhow::Result<Summary> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let exe = std::env::current_exe().context("cannot find this binary")?;
    let log_dir = match &opts.log_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("squall-{}-{}", name, std::process::id())),
    };
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    let topology_ref = TopologyRef {
        namespace: opts.namespace.clone(),
        name: name.to_string(),
    };
    let topology = format!("{}/{}", opts.namespace, name);

    let store = rt.block_on(async {
        let c = squall_coord::connect(&opts.etcd, &opts.etcd_tls)
            .await
            .with_context(|| format!("cannot reach etcd at {}", opts.etcd))?;
        let store = TopologyStore::new(c, &opts.prefix, &opts.namespace, name);
        // A fresh run: nothing left over from an earlier one is trusted.
        store.delete_all().await?;
        store
            .put_control(&Control {
                active: spec.active,
                ..Control::default()
            })
            .await?;
        let a = Assignment::following(None, topology_ref.clone(), spec.clone());
        store.put_assignment(&a).await?;
        anyhow::Ok((store, a))
    })?;
    // Mutual TLS between the workers, as on a cluster: a CA for this run.
    let tls_dir = log_dir.join("transport-tls");
    squall_coord::tls::TopologyPki::generate(&topology)?.write_to(&tls_dir)?;
    let (store, first) = store;
    let mut assignment_rx = rt.block_on(store.watch_key::<Assignment>(store.keys.assignment()))?;
    let mut version = first.version;
    let mut workers = first.plan.workers;
    let timeout = Duration::from_secs(u64::from(spec.message_timeout_seconds));
    eprintln!(
        "launching {topology}: {workers} worker processes; logs in {}",
        log_dir.display()
    );

    let mut pairs: BTreeMap<u32, Pair> = BTreeMap::new();
    let start_pair = |slot: u32| -> anyhow::Result<Pair> {
        let invocation = WorkerInvocation {
            topology: topology_ref.clone(),
            slot,
            etcd: opts.etcd.clone(),
            prefix: opts.prefix.clone(),
            etcd_tls: opts.etcd_tls.clone(),
            agent_addr: format!("127.0.0.1:{}", free_port()?),
            worker: WorkerFlags {
                listen: "127.0.0.1:0".to_string(),
                advertise: None,
                http: None,
                batch_size: Some(opts.batch_size),
                tls_dir: Some(tls_dir.display().to_string()),
            },
            pod: None,
        };
        let wargs = invocation.worker_args();
        let mut sargs = vec!["supervisor".to_string()];
        sargs.extend(invocation.supervisor_args());
        let worker = Proc::spawn(
            &exe,
            wargs,
            log_dir.join(format!("worker-{slot}.log")),
            log_dir.join(format!("worker-{slot}.pid")),
        )?;
        let supervisor = Proc::spawn(
            &exe,
            sargs,
            log_dir.join(format!("supervisor-{slot}.log")),
            log_dir.join(format!("supervisor-{slot}.pid")),
        )?;
        eprintln!(
            "slot {slot}: worker pid {} supervisor pid {}",
            worker.child.id(),
            supervisor.child.id()
        );
        Ok(Pair { worker, supervisor })
    };
    for slot in 0..workers {
        pairs.insert(slot, start_pair(slot)?);
    }
    let mut retiring: Vec<Retiring> = Vec::new();
    let mut ledger = StatsLedger::default();
    // How long a removed slot gets to apply the new plan (drain its trees) before it is stopped anyway.
    let retire_grace = timeout + Duration::from_secs(15);

    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut last_stats: BTreeMap<u32, WorkerStats> = BTreeMap::new();
    let mut last_check = Instant::now() - Duration::from_secs(1);
    let kinds: BTreeMap<String, PlannedKind> = first
        .plan
        .components
        .iter()
        .map(|c| (c.id.clone(), c.kind))
        .collect();
    let interrupted = || {
        opts.interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    };
    let ui = match opts.ui_addr {
        Some(addr) => Some(
            crate::ui::LocalUi::serve(addr)
                .with_context(|| format!("cannot serve the web UI on {addr}"))?
                .0,
        ),
        None => None,
    };
    let stopped_by = loop {
        std::thread::sleep(Duration::from_millis(50));
        if interrupted() {
            break "interrupt";
        }
        if opts.duration.is_some_and(|d| started.elapsed() >= d) {
            break "duration";
        }
        // Kubelet's part: restart what died.
        for (slot, pair) in &mut pairs {
            for (what, p) in [
                ("worker", &mut pair.worker),
                ("supervisor", &mut pair.supervisor),
            ] {
                if let Ok(Some(status)) = p.child.try_wait() {
                    p.restarts += 1;
                    eprintln!(
                        "slot {slot}: {what} exited ({status}); restarting (restart {})",
                        p.restarts
                    );
                    match spawn_logged(&exe, &p.args, &p.log) {
                        Ok(c) => {
                            let _ = std::fs::write(&p.pid_file, c.id().to_string());
                            p.child = c;
                        }
                        Err(e) => eprintln!("slot {slot}: cannot restart {what}: {e:#}"),
                    }
                }
            }
        }
        // The operator's part: pairs for the slots of a new plan.
        if assignment_rx.has_changed().unwrap_or(false) {
            let a = assignment_rx.borrow_and_update().clone();
            if let Some(a) = a
                && a.version > version
            {
                version = a.version;
                workers = a.plan.workers;
                eprintln!("assignment version {version}: {workers} workers");
                for slot in 0..workers {
                    if let std::collections::btree_map::Entry::Vacant(e) = pairs.entry(slot) {
                        // A slot that comes back while its old pair is still stopping: stop that one now.
                        if let Some(i) = retiring.iter().position(|r| r.slot == slot) {
                            retiring.swap_remove(i).pair.kill();
                        }
                        e.insert(start_pair(slot)?);
                    }
                }
                // Slots the new plan no longer has: their workers go idle once they
                // have applied it (their trees drained or failed back); then stop them.
                let gone: Vec<u32> = pairs.range(workers..).map(|(s, _)| *s).collect();
                for slot in gone {
                    if let Some(pair) = pairs.remove(&slot) {
                        eprintln!(
                            "slot {slot}: not in the plan any more; stopping it once drained"
                        );
                        retiring.push(Retiring {
                            slot,
                            pair,
                            terminated: None,
                            deadline: Instant::now() + retire_grace,
                        });
                    }
                }
            }
        }
        if !retiring.is_empty() {
            retire(&mut retiring, &ledger.totals(), version);
        }
        if last_check.elapsed() >= Duration::from_millis(250) {
            last_check = Instant::now();
            let Ok(stats) = rt.block_on(store.stats()) else {
                continue;
            };
            ledger.observe_all(&stats);
            if let Some(ui) = &ui {
                show(ui, name, &spec, &ledger, &stats, &pairs, workers);
            }
            let stats = ledger.totals();
            let done = (0..workers).all(|s| {
                stats.get(&s).is_some_and(|w| {
                    w.applied_version == version && w.spouts_done && w.pending == 0
                })
            });
            if let Some(every) = opts.report_every
                && last_report.elapsed() >= every
            {
                let table = render_table(
                    &stats,
                    &last_stats,
                    &kinds,
                    last_report.elapsed(),
                    started.elapsed(),
                );
                if opts.table_to_stderr {
                    let _ = std::io::stderr().write_all(table.as_bytes());
                } else {
                    print!("{table}");
                    let _ = std::io::stdout().flush();
                }
                last_stats = stats.clone();
                last_report = Instant::now();
            }
            if done {
                break "limit";
            }
        }
    };

    // Deactivate, let open trees complete or time out, then kill the topology.
    let _ = rt.block_on(store.put_control(&Control {
        active: false,
        ..Control::default()
    }));
    let drain_deadline = Instant::now() + timeout + Duration::from_secs(2);
    let read = |ledger: &mut StatsLedger| {
        if let Ok(stats) = rt.block_on(store.stats()) {
            ledger.observe_all(&stats);
        }
        ledger.totals()
    };
    let mut fin = read(&mut ledger);
    while Instant::now() < drain_deadline && !interrupted() {
        std::thread::sleep(Duration::from_millis(200));
        fin = read(&mut ledger);
        if fin.values().all(|w| w.pending == 0) && stopped_by != "limit" {
            // One more round so that every supervisor published after the drain.
            std::thread::sleep(Duration::from_millis(1200));
            fin = read(&mut ledger);
            break;
        }
        if stopped_by == "limit" {
            // Executors publish their counters about once a second and supervisors
            // read them once a second: wait for two rounds so the totals are final.
            std::thread::sleep(Duration::from_millis(2500));
            fin = read(&mut ledger);
            break;
        }
    }
    let elapsed = started.elapsed();
    let _ = rt.block_on(store.put_control(&Control {
        active: false,
        killed: true,
        ..Control::default()
    }));
    let exit_deadline = Instant::now() + Duration::from_secs(5);
    for pair in pairs.values_mut() {
        while Instant::now() < exit_deadline && matches!(pair.worker.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for (_, mut pair) in pairs {
        pair.kill();
    }
    for mut r in retiring {
        r.pair.kill();
    }
    let _ = rt.block_on(store.delete_all());
    Ok(summarize(name, &fin, &kinds, elapsed, stopped_by))
}

/// Move retiring pairs along: SIGTERM once their worker applied plan `version`
/// (or the grace is over), SIGKILL if they linger 5 s after that, forget them once exited.
fn retire(retiring: &mut Vec<Retiring>, stats: &BTreeMap<u32, WorkerStats>, version: u64) {
    retiring.retain_mut(|r| match r.terminated {
        None => {
            let applied = stats
                .get(&r.slot)
                .is_some_and(|w| w.applied_version >= version && w.pending == 0);
            if applied || Instant::now() >= r.deadline {
                r.pair.terminate();
                r.terminated = Some(Instant::now());
            }
            true
        }
        Some(at) => {
            if r.pair.exited() {
                eprintln!("slot {}: stopped", r.slot);
                return false;
            }
            if at.elapsed() >= Duration::from_secs(5) {
                r.pair.kill();
                eprintln!("slot {}: killed (did not stop within 5s)", r.slot);
                return false;
            }
            true
        }
    });
}

/// Refresh the web UI from the workers' stats records: rates from their
/// recent windows, totals from the ledger, a row per worker process.
fn show(
    ui: &crate::ui::LocalUi,
    name: &str,
    spec: &TopologySpec,
    ledger: &StatsLedger,
    stats: &BTreeMap<u32, WorkerStats>,
    pairs: &BTreeMap<u32, Pair>,
    workers: u32,
) {
    let now_ms = crate::cluster::unix_ms();
    let recent = squall_api::view::Recent::of_workers(stats);
    let rows = (0..workers)
        .map(|slot| {
            let w = stats.get(&slot);
            squall_api::view::WorkerView {
                slot,
                pod: pairs
                    .get(&slot)
                    .map(|p| format!("worker pid {}", p.worker.child.id())),
                node: Some("localhost".into()),
                state: match w {
                    Some(w) if now_ms.saturating_sub(w.timestamp_ms) < 5000 => "running",
                    Some(_) => "silent",
                    None => "starting",
                }
                .into(),
                uptime_seconds: None,
                restarts: pairs.get(&slot).map(|p| p.worker.restarts),
                plan_version: w.map(|w| w.applied_version),
                last_heartbeat_seconds_ago: w
                    .map(|w| (now_ms.saturating_sub(w.timestamp_ms) as f64 / 100.0).round() / 10.0),
            }
        })
        .collect();
    ui.update(name, spec, "Running", &ledger.components(), &recent, rows);
}

/// Sum the stats of every worker per component.
pub fn aggregate(stats: &BTreeMap<u32, WorkerStats>) -> BTreeMap<String, ComponentStats> {
    let mut out: BTreeMap<String, ComponentStats> = BTreeMap::new();
    for w in stats.values() {
        ComponentStats::add_all(&mut out, &w.components);
    }
    out
}

fn summarize(
    name: &str,
    fin: &BTreeMap<u32, WorkerStats>,
    kinds: &BTreeMap<String, PlannedKind>,
    elapsed: Duration,
    stopped_by: &str,
) -> Summary {
    let components = aggregate(fin);
    let mut spouts = ComponentStats::default();
    let mut latency = None;
    for (id, c) in &components {
        if kinds.get(id) == Some(&PlannedKind::Spout) {
            spouts.acked += c.acked;
            spouts.failed += c.failed;
            spouts.roots += c.roots;
            spouts.replayed += c.replayed;
            latency = squall_api::records::LatencySummary::merge(latency, c.complete_latency_ms);
        }
    }
    spouts.complete_latency_ms = latency;
    let open = fin.values().map(|w| w.pending as usize).sum();
    Summary::new(name, &spouts, elapsed, stopped_by, open, components)
}

/// The live table, from the stats records: rates over the last window.
fn render_table(
    now: &BTreeMap<u32, WorkerStats>,
    prev: &BTreeMap<u32, WorkerStats>,
    kinds: &BTreeMap<String, PlannedKind>,
    window: Duration,
    uptime: Duration,
) -> String {
    let before = aggregate(prev);
    let rows = aggregate(now)
        .into_iter()
        .filter_map(|(id, s)| {
            let kind = *kinds.get(&id)?;
            let p = before.get(&id).cloned().unwrap_or_default();
            let delta = ComponentStats {
                emitted: s.emitted.saturating_sub(p.emitted),
                transferred: s.transferred.saturating_sub(p.transferred),
                acked: s.acked.saturating_sub(p.acked),
                failed: s.failed.saturating_sub(p.failed),
                executed: s.executed.saturating_sub(p.executed),
                ..s
            };
            Some((id, (kind, delta)))
        })
        .collect();
    crate::report::format_table(
        &rows,
        window,
        uptime,
        &format!("  workers reporting: {}", now.len()),
    )
}

/// Write a new plan with `workers` slots (task counts unchanged) and bump the
/// rebalance epoch; returns the new assignment version.
pub async fn rebalance(
    etcd: &str,
    etcd_tls: &EtcdTlsFiles,
    prefix: &str,
    namespace: &str,
    name: &str,
    workers: u32,
) -> anyhow::Result<u64> {
    let c = squall_coord::connect(etcd, etcd_tls)
        .await
        .with_context(|| format!("cannot reach etcd at {etcd}"))?;
    let store = TopologyStore::new(c, prefix, namespace, name);
    let current = store
        .assignment()
        .await?
        .with_context(|| format!("no assignment for {namespace}/{name}"))?;
    let mut spec = current.spec.clone();
    spec.workers = workers.max(1);
    let a = Assignment::following(Some(&current), current.topology.clone(), spec);
    store.put_assignment(&a).await?;
    let mut control = store.control().await?.unwrap_or_default();
    control.rebalance_epoch += 1;
    store.put_control(&control).await?;
    Ok(a.version)
}
