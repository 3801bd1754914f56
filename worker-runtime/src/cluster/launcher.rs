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
//! zero again. The launcher keeps a [`Ledger`]: the last totals of each earlier
//! process of a slot are banked and added to what the current process reports,
//! so run totals never go down across restarts.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use squall_api::records::{Assignment, ComponentStats, Control, TopologyRef, WorkerStats};
use squall_api::{PhysicalPlan, PlannedKind, TopologySpec};

use crate::coord::{self, TopologyStore};
use crate::local::Summary;

/// How a multi-process run behaves.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    pub namespace: String,
    pub etcd: String,
    pub prefix: String,
    /// Override the manifest's `workers`.
    pub workers: Option<u32>,
    pub duration: Option<Duration>,
    pub report_every: Option<Duration>,
    pub table_to_stderr: bool,
    /// Where process logs and pid files go (default: a fresh temporary directory).
    pub log_dir: Option<PathBuf>,
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

/// Run totals per slot across worker restarts.
///
/// Every process of a slot counts from zero. When the launcher starts a new
/// worker process for a slot that had one, the previous process's last
/// snapshot becomes final: it is banked, and later snapshots stamped before the
/// restart (published late) replace it. Snapshots stamped after the restart
/// belong to the new process.
#[derive(Default)]
pub struct Ledger {
    slots: BTreeMap<u32, SlotLedger>,
}

#[derive(Default)]
struct SlotLedger {
    /// Totals of every finished process of the slot but the last one.
    banked: BTreeMap<String, ComponentStats>,
    /// The last snapshot of the most recently finished process.
    previous: Option<WorkerStats>,
    /// Unix ms when the current process was started (0: the first process).
    since_ms: u64,
    current: Option<WorkerStats>,
}

impl Ledger {
    /// A new worker process was started for `slot` (a restart, or a slot that comes back).
    pub fn restarted(&mut self, slot: u32) {
        self.restarted_at(slot, super::unix_ms());
    }

    fn restarted_at(&mut self, slot: u32, now_ms: u64) {
        let l = self.slots.entry(slot).or_default();
        if let Some(p) = l.previous.take() {
            add_components(&mut l.banked, &p.components);
        }
        l.previous = l.current.take();
        l.since_ms = now_ms;
    }

    /// Take in the snapshots read from etcd.
    pub fn update(&mut self, stats: &BTreeMap<u32, WorkerStats>) {
        for (slot, s) in stats {
            let l = self.slots.entry(*slot).or_default();
            if s.timestamp_ms < l.since_ms {
                // Published late by the previous process.
                if l.previous
                    .as_ref()
                    .is_none_or(|p| p.timestamp_ms <= s.timestamp_ms)
                {
                    l.previous = Some(s.clone());
                }
            } else {
                l.current = Some(s.clone());
            }
        }
    }

    /// Per slot: the current process's state (applied version, pending, spouts
    /// done) with counters totalled over every process of the slot. A slot whose
    /// current process has not reported yet is left out.
    pub fn totals(&self) -> BTreeMap<u32, WorkerStats> {
        let mut out = BTreeMap::new();
        for (slot, l) in &self.slots {
            let Some(cur) = &l.current else { continue };
            let mut components = l.banked.clone();
            if let Some(p) = &l.previous {
                add_components(&mut components, &p.components);
            }
            add_components(&mut components, &cur.components);
            out.insert(
                *slot,
                WorkerStats {
                    components,
                    ..cur.clone()
                },
            );
        }
        out
    }
}

/// Add `more` into `into`, component by component.
fn add_components(
    into: &mut BTreeMap<String, ComponentStats>,
    more: &BTreeMap<String, ComponentStats>,
) {
    for (id, c) in more {
        let e = into.entry(id.clone()).or_default();
        e.emitted += c.emitted;
        e.transferred += c.transferred;
        e.acked += c.acked;
        e.failed += c.failed;
        e.executed += c.executed;
        e.replayed += c.replayed;
        e.roots += c.roots;
        e.capacity = e.capacity.max(c.capacity);
        e.complete_latency_ms = merge_latency(e.complete_latency_ms, c.complete_latency_ms);
        e.execute_latency_ms = merge_latency(e.execute_latency_ms, c.execute_latency_ms);
        e.process_latency_ms = merge_latency(e.process_latency_ms, c.process_latency_ms);
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

/// Run `spec` as worker processes coordinated through etcd.
pub fn run(name: &str, mut spec: TopologySpec, opts: &LaunchOptions) -> anyhow::Result<Summary> {
    if let Some(w) = opts.workers {
        spec.workers = w.max(1);
    }
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
    let topology = format!("{}/{}", opts.namespace, name);

    let store = rt.block_on(async {
        let c = coord::connect(&opts.etcd)
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
        let plan = PhysicalPlan::compute(&spec);
        let a = Assignment {
            version: 1,
            topology: TopologyRef {
                namespace: opts.namespace.clone(),
                name: name.to_string(),
            },
            spec: spec.clone(),
            plan,
        };
        store.put_assignment(&a).await?;
        anyhow::Ok(store)
    })?;
    let mut assignment_rx = rt.block_on(store.watch_key::<Assignment>(store.keys.assignment()))?;
    let mut version = 1u64;
    let mut workers = PhysicalPlan::compute(&spec).workers;
    let timeout = Duration::from_secs(u64::from(spec.message_timeout_seconds));
    eprintln!(
        "launching {topology}: {workers} worker processes; logs in {}",
        log_dir.display()
    );

    let mut pairs: BTreeMap<u32, Pair> = BTreeMap::new();
    let start_pair = |slot: u32| -> anyhow::Result<Pair> {
        let agent = format!("127.0.0.1:{}", free_port()?);
        let common = vec![
            "--topology".to_string(),
            topology.clone(),
            "--slot".to_string(),
            slot.to_string(),
            "--etcd".to_string(),
            opts.etcd.clone(),
            "--prefix".to_string(),
            opts.prefix.clone(),
            "--agent-addr".to_string(),
            agent,
        ];
        let mut wargs = vec!["worker".to_string()];
        wargs.extend(common.iter().cloned());
        wargs.extend([
            "--listen".to_string(),
            "127.0.0.1:0".to_string(),
            "--batch-size".to_string(),
            opts.batch_size.to_string(),
        ]);
        let mut sargs = vec!["supervisor".to_string()];
        sargs.extend(common);
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
    let mut ledger = Ledger::default();
    // How long a removed slot gets to apply the new plan (drain its trees) before it is stopped anyway.
    let retire_grace = timeout + Duration::from_secs(15);

    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut last_stats: BTreeMap<u32, WorkerStats> = BTreeMap::new();
    let mut last_check = Instant::now() - Duration::from_secs(1);
    let kinds: BTreeMap<String, PlannedKind> = PhysicalPlan::compute(&spec)
        .components
        .iter()
        .map(|c| (c.id.clone(), c.kind))
        .collect();
    let interrupted = || {
        opts.interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
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
                    if what == "worker" {
                        // Its counters start from zero again: bank what the dead one counted.
                        ledger.restarted(*slot);
                    }
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
                        if ledger.slots.contains_key(&slot) {
                            ledger.restarted(slot);
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
            ledger.update(&stats);
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
    let read = |ledger: &mut Ledger| {
        if let Ok(stats) = rt.block_on(store.stats()) {
            ledger.update(&stats);
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

/// Sum the stats of every worker per component.
pub fn aggregate(stats: &BTreeMap<u32, WorkerStats>) -> BTreeMap<String, ComponentStats> {
    let mut out: BTreeMap<String, ComponentStats> = BTreeMap::new();
    for w in stats.values() {
        add_components(&mut out, &w.components);
    }
    out
}

/// Combine two latency summaries: counts add, the mean and p50 are weighted, p99 and max take the larger
/// (an upper bound, since percentiles of separate histograms do not merge exactly).
fn merge_latency(
    a: Option<squall_api::records::LatencySummary>,
    b: Option<squall_api::records::LatencySummary>,
) -> Option<squall_api::records::LatencySummary> {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(a), Some(b)) => {
            let n = (a.count + b.count).max(1) as f64;
            let w = |x: f64, y: f64| (x * a.count as f64 + y * b.count as f64) / n;
            Some(squall_api::records::LatencySummary {
                count: a.count + b.count,
                mean: w(a.mean, b.mean),
                p50: w(a.p50, b.p50),
                p99: a.p99.max(b.p99),
                max: a.max.max(b.max),
            })
        }
    }
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
            latency = merge_latency(latency, c.complete_latency_ms);
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
    crate::local::format_table(
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
    prefix: &str,
    namespace: &str,
    name: &str,
    workers: u32,
) -> anyhow::Result<u64> {
    let c = coord::connect(etcd)
        .await
        .with_context(|| format!("cannot reach etcd at {etcd}"))?;
    let store = TopologyStore::new(c, prefix, namespace, name);
    let mut a = store
        .assignment()
        .await?
        .with_context(|| format!("no assignment for {namespace}/{name}"))?;
    a.spec.workers = workers.max(1);
    a.plan = PhysicalPlan::compute(&a.spec);
    a.version += 1;
    store.put_assignment(&a).await?;
    let mut control = store.control().await?.unwrap_or_default();
    control.rebalance_epoch += 1;
    store.put_control(&control).await?;
    Ok(a.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(slot: u32, ts: u64, acked: u64, executed: u64) -> WorkerStats {
        let mut components = BTreeMap::new();
        components.insert(
            "c".to_string(),
            ComponentStats {
                acked,
                executed,
                ..ComponentStats::default()
            },
        );
        WorkerStats {
            slot,
            applied_version: 1,
            timestamp_ms: ts,
            components,
            pending: 0,
            spouts_done: false,
            recent_complete_latency_ms: Default::default(),
        }
    }

    fn totals(l: &Ledger, slot: u32) -> (u64, u64) {
        let t = l.totals();
        let c = &t[&slot].components["c"];
        (c.acked, c.executed)
    }

    #[test]
    fn totals_keep_what_a_restarted_worker_counted() {
        let mut l = Ledger::default();
        l.update(&BTreeMap::from([
            (0, snap(0, 1000, 10, 100)),
            (1, snap(1, 1000, 5, 50)),
        ]));
        l.update(&BTreeMap::from([(0, snap(0, 2000, 20, 200))]));
        assert_eq!(totals(&l, 0), (20, 200));
        // Slot 0's worker dies at 2500 and a new one starts.
        l.restarted_at(0, 2500);
        // The old record is still in etcd until the new process publishes: not counted twice.
        l.update(&BTreeMap::from([(0, snap(0, 2000, 20, 200))]));
        assert!(
            !l.totals().contains_key(&0),
            "no report from the new process yet"
        );
        // A late snapshot of the dead process replaces its banked one.
        l.update(&BTreeMap::from([(0, snap(0, 2400, 22, 220))]));
        l.update(&BTreeMap::from([(0, snap(0, 3000, 1, 30))]));
        assert_eq!(totals(&l, 0), (23, 250));
        // A second restart banks the first process's totals for good.
        l.update(&BTreeMap::from([(0, snap(0, 4000, 3, 40))]));
        l.restarted_at(0, 4500);
        l.update(&BTreeMap::from([(0, snap(0, 5000, 2, 2))]));
        assert_eq!(totals(&l, 0), (27, 262));
        // Other slots are untouched.
        assert_eq!(totals(&l, 1), (5, 50));
    }
}
