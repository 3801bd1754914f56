//! Semantic validation of a topology graph.
//!
//! Every error names the exact field (`spec.streams[1].grouping.fields[0]`), so the
//! operator can put it in a condition and local mode can print it verbatim.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::catalog::ComponentCatalog;
use crate::sizing;
use crate::topology::{ComponentKind, ComponentSpec, GroupingType, TopologySpec};

/// Component ids that the runtime reserves for its own tasks.
pub const SYSTEM_ID_PREFIX: &str = "__";

/// Limits that keep a plan within what one machine can hold. The CRD's schema
/// carries the per-field ones; [`validate`] checks all of them, so local mode,
/// `--processes` and the operator refuse the same manifests before any memory is
/// committed to a plan.
pub mod limits {
    /// Worker processes (pods) of a topology.
    pub const MAX_WORKERS: u32 = 1024;
    /// Acker tasks.
    pub const MAX_ACKERS: u32 = 1024;
    /// Executors (threads) of one component.
    pub const MAX_PARALLELISM: u32 = 4096;
    /// Tasks of one component.
    pub const MAX_TASKS: u32 = 65536;
    /// Tasks of the whole topology, ackers included: the routing tables of every
    /// executor are sized by it.
    pub const MAX_TOTAL_TASKS: u64 = 65536;
    /// Executors that one worker runs: each is a thread with its own queue.
    pub const MAX_EXECUTORS_PER_WORKER: u64 = 1024;
}

/// One problem with a manifest, located by its field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// A JSON-path-like location, e.g. `spec.bolts[2].parallelism`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All the problems found in one manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "invalid topology: {}", parts.join("; "))
    }
}

impl ValidationErrors {
    /// Whether any error is located at or below `field`.
    pub fn mentions(&self, field: &str) -> bool {
        self.0.iter().any(|e| e.field.starts_with(field))
    }
}

/// Check a spec's graph; with a catalog, also check component names, kinds, streams and fields.
pub fn validate(
    spec: &TopologySpec,
    catalog: Option<&ComponentCatalog>,
) -> Result<(), ValidationErrors> {
    let mut errs = Vec::new();
    let mut err = |field: String, message: String| errs.push(FieldError { field, message });

    if spec.spouts.is_empty() {
        err(
            "spec.spouts".into(),
            "a topology needs at least one spout".into(),
        );
    }
    if spec.workers < 1 {
        err("spec.workers".into(), "must be at least 1".into());
    }
    if spec.workers > limits::MAX_WORKERS {
        err(
            "spec.workers".into(),
            format!("{} is more than {}", spec.workers, limits::MAX_WORKERS),
        );
    }
    if let Some(a) = spec.ackers.filter(|&a| a > limits::MAX_ACKERS) {
        err(
            "spec.ackers".into(),
            format!("{a} is more than {}", limits::MAX_ACKERS),
        );
    }
    if spec.message_timeout_seconds < 1 {
        err(
            "spec.messageTimeoutSeconds".into(),
            "must be at least 1".into(),
        );
    }
    if spec.max_spout_pending < 1 {
        err("spec.maxSpoutPending".into(), "must be at least 1".into());
    }

    // Ids: unique across spouts and bolts, not reserved, sane characters.
    let mut seen: BTreeMap<&str, String> = BTreeMap::new();
    for (list, comps) in [("spouts", &spec.spouts), ("bolts", &spec.bolts)] {
        for (i, c) in comps.iter().enumerate() {
            let at = format!("spec.{list}[{i}]");
            if c.id.is_empty() {
                err(format!("{at}.id"), "must not be empty".into());
            } else if c.id.starts_with(SYSTEM_ID_PREFIX) {
                err(
                    format!("{at}.id"),
                    format!("ids starting with '{SYSTEM_ID_PREFIX}' are reserved"),
                );
            } else if !c
                .id
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch))
            {
                err(
                    format!("{at}.id"),
                    format!("'{}' may only use letters, digits, '_', '.', '-'", c.id),
                );
            }
            if let Some(first) = seen.get(c.id.as_str()) {
                err(
                    format!("{at}.id"),
                    format!("duplicate id '{}' (first used at {first})", c.id),
                );
            } else {
                seen.insert(&c.id, at.clone());
            }
            if c.parallelism < 1 {
                err(format!("{at}.parallelism"), "must be at least 1".into());
            } else if c.parallelism > limits::MAX_PARALLELISM {
                err(
                    format!("{at}.parallelism"),
                    format!("{} is more than {}", c.parallelism, limits::MAX_PARALLELISM),
                );
            }
            if let Some(tasks) = c.tasks {
                if tasks < 1 {
                    err(format!("{at}.tasks"), "must be at least 1".into());
                } else if tasks > limits::MAX_TASKS {
                    err(
                        format!("{at}.tasks"),
                        format!("{tasks} is more than {}", limits::MAX_TASKS),
                    );
                } else if c.parallelism > tasks {
                    err(
                        format!("{at}.parallelism"),
                        format!(
                            "{} exceeds tasks ({tasks}); an executor needs at least one task",
                            c.parallelism
                        ),
                    );
                }
            }
            if c.tick_frequency_seconds == Some(0) {
                err(
                    format!("{at}.tickFrequencySeconds"),
                    "must be at least 1".into(),
                );
            }
            check_implementation(list, &at, c, catalog, &mut err);
        }
    }

    // The plan as a whole: tasks in all, and executors per worker.
    let acker_tasks = u64::from(spec.acker_count());
    let tasks: u64 = spec
        .components()
        .map(|(_, c)| u64::from(c.task_count()))
        .sum::<u64>()
        + acker_tasks;
    if tasks > limits::MAX_TOTAL_TASKS {
        err(
            "spec".into(),
            format!(
                "{tasks} tasks in all (ackers included) is more than {}",
                limits::MAX_TOTAL_TASKS
            ),
        );
    }
    let executors: u64 = spec
        .components()
        .map(|(_, c)| u64::from(c.parallelism.clamp(1, c.task_count().max(1))))
        .sum::<u64>()
        + acker_tasks;
    let per_worker = executors.div_ceil(u64::from(spec.workers.max(1)));
    if per_worker > limits::MAX_EXECUTORS_PER_WORKER {
        err(
            "spec.workers".into(),
            format!(
                "{executors} executors over {} workers is {per_worker} per worker, more than {}; add workers or lower parallelism",
                spec.workers,
                limits::MAX_EXECUTORS_PER_WORKER
            ),
        );
    }

    // Memory: a worker's queues, when full, must fit its container's limit.
    let limit = spec
        .worker
        .as_ref()
        .and_then(|w| w.resources.as_ref())
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"));
    if let Some(limit) = limit {
        let field = "spec.worker.resources.limits.memory";
        match sizing::quantity_bytes(&limit.0) {
            None => err(
                field.into(),
                format!("'{}' is not a quantity of bytes", limit.0),
            ),
            Some(bytes) => {
                let spout_tasks: u64 = spec.spouts.iter().map(|c| u64::from(c.task_count())).sum();
                let open_trees = (spout_tasks * u64::from(spec.max_spout_pending))
                    .div_ceil(u64::from(spec.workers.max(1)));
                let need = sizing::worker_memory(per_worker, open_trees);
                if need > bytes {
                    err(
                        field.into(),
                        format!(
                            "{} is less than the {} MiB a worker may need: {per_worker} executors with full queues ({} MiB each), {open_trees} open tuple trees, and {} MiB for the runtime; raise the limit, add workers, or lower parallelism",
                            limit.0,
                            sizing::mib(need),
                            sizing::mib(sizing::EXECUTOR_BYTES),
                            sizing::mib(sizing::WORKER_BASE_BYTES),
                        ),
                    );
                }
            }
        }
    }

    // Streams: known endpoints, declared stream and fields, well-formed groupings.
    let mut subscriptions = BTreeSet::new();
    for (i, s) in spec.streams.iter().enumerate() {
        let at = format!("spec.streams[{i}]");
        let source = spec.component(&s.from);
        if source.is_none() {
            err(
                format!("{at}.from"),
                format!("unknown component id '{}'", s.from),
            );
        }
        match spec.component(&s.to) {
            None => err(
                format!("{at}.to"),
                format!("unknown component id '{}'", s.to),
            ),
            Some((ComponentKind::Spout, _)) => err(
                format!("{at}.to"),
                format!("'{}' is a spout; only bolts consume streams", s.to),
            ),
            Some(_) => {}
        }
        if !subscriptions.insert((&s.from, &s.stream, &s.to)) {
            err(
                at.clone(),
                format!(
                    "'{}' already subscribes to stream '{}' of '{}'",
                    s.to, s.stream, s.from
                ),
            );
        }
        let keyed = matches!(
            s.grouping.kind,
            GroupingType::Fields | GroupingType::PartialKey
        );
        if keyed && s.grouping.fields.is_empty() {
            err(
                format!("{at}.grouping.fields"),
                format!("a {:?} grouping needs at least one field", s.grouping.kind),
            );
        }
        if !keyed && !s.grouping.fields.is_empty() {
            err(
                format!("{at}.grouping.fields"),
                format!("a {:?} grouping takes no fields", s.grouping.kind),
            );
        }
        // What a registered source declares is only known with a catalog; a shell
        // source declares its outputs in the manifest.
        let declared = source
            .and_then(|(_, comp)| declared_outputs(comp, catalog))
            .map(|outputs| outputs.get(&s.stream).ok_or(outputs));
        match declared {
            Some(Err(outputs)) => {
                let streams: Vec<&str> = outputs.keys().map(String::as_str).collect();
                err(
                    format!("{at}.stream"),
                    format!(
                        "'{}' does not declare stream '{}' (it declares: {})",
                        s.from,
                        s.stream,
                        streams.join(", ")
                    ),
                );
            }
            Some(Ok(fields)) => {
                for (j, f) in s.grouping.fields.iter().enumerate() {
                    if !fields.contains(f) {
                        err(
                            format!("{at}.grouping.fields[{j}]"),
                            format!(
                                "stream '{}' of '{}' has no field '{f}' (it declares: {})",
                                s.stream,
                                s.from,
                                fields.join(", ")
                            ),
                        );
                    }
                }
            }
            None => {}
        }
    }

    if errs.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(errs))
    }
}

/// A component's declared output streams: from the manifest for a shell component,
/// from the catalog for a registered one (`None` without a catalog or when unknown).
pub fn declared_outputs<'a>(
    c: &'a ComponentSpec,
    catalog: Option<&'a ComponentCatalog>,
) -> Option<&'a BTreeMap<String, Vec<String>>> {
    match (&c.component, &c.shell) {
        (None, Some(_)) => Some(&c.outputs),
        (Some(name), None) => catalog?.get(name).map(|d| &d.outputs),
        _ => None,
    }
}

/// `component` xor `shell`, a registered component of the right kind, and a
/// well-formed shell command and output declaration.
fn check_implementation(
    list: &str,
    at: &str,
    c: &ComponentSpec,
    catalog: Option<&ComponentCatalog>,
    err: &mut impl FnMut(String, String),
) {
    match (&c.component, &c.shell) {
        (Some(_), Some(_)) => err(
            at.to_string(),
            "set exactly one of 'component' and 'shell', not both".into(),
        ),
        (None, None) => err(
            format!("{at}.component"),
            "missing: name a registered component, or give a 'shell' command".into(),
        ),
        (Some(name), None) => {
            if !c.outputs.is_empty() {
                err(
                    format!("{at}.outputs"),
                    format!("'{name}' declares its own outputs; 'outputs' is for shell components"),
                );
            }
            let Some(cat) = catalog else { return };
            let want = if list == "spouts" {
                ComponentKind::Spout
            } else {
                ComponentKind::Bolt
            };
            match cat.get(name) {
                None if cat.components.is_empty() => err(
                    format!("{at}.component"),
                    format!(
                        "unknown component '{name}'; this binary has no registered components (use 'shell', or a topology binary that registers '{name}')"
                    ),
                ),
                None => err(
                    format!("{at}.component"),
                    format!(
                        "unknown component '{name}'; this binary provides: {}",
                        cat.names().join(", ")
                    ),
                ),
                Some(decl) if decl.kind != want => err(
                    format!("{at}.component"),
                    format!("'{name}' is a {:?}, not a {want:?}", decl.kind).to_lowercase(),
                ),
                Some(_) => {}
            }
        }
        (None, Some(sh)) => {
            if sh.command.is_empty() {
                err(
                    format!("{at}.shell.command"),
                    "must name a program to run".into(),
                );
            }
            for (j, arg) in sh.command.iter().enumerate() {
                if arg.is_empty() && j == 0 {
                    err(
                        format!("{at}.shell.command[0]"),
                        "the program must not be empty".into(),
                    );
                }
                if arg.contains('\0') {
                    err(
                        format!("{at}.shell.command[{j}]"),
                        "must not contain a NUL byte".into(),
                    );
                }
            }
            if sh.timeout_seconds < 1 {
                err(
                    format!("{at}.shell.timeoutSeconds"),
                    "must be at least 1".into(),
                );
            }
            for (stream, fields) in &c.outputs {
                let sat = format!("{at}.outputs.{stream}");
                if stream.is_empty() || stream.starts_with(SYSTEM_ID_PREFIX) {
                    err(
                        sat.clone(),
                        format!("'{stream}' is not a valid stream name (empty or reserved '__')"),
                    );
                }
                let mut seen = BTreeSet::new();
                for (j, f) in fields.iter().enumerate() {
                    if f.is_empty() {
                        err(
                            format!("{sat}[{j}]"),
                            "field names must not be empty".into(),
                        );
                    } else if !seen.insert(f) {
                        err(format!("{sat}[{j}]"), format!("duplicate field '{f}'"));
                    }
                }
            }
        }
    }
}
