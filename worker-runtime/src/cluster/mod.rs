//! Running a topology over several processes: worker mode, the supervisor
//! sidecar, and the multi-process launcher that plays the operator's and the
//! kubelet's parts on one machine.

pub mod agent;
pub mod launcher;
pub mod supervisor;
pub mod worker_mode;

/// `ns/name` → (`ns`, `name`); a bare name is in namespace `default`.
pub fn split_topology(s: &str) -> (String, String) {
    match s.split_once('/') {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => ("default".to_string(), s.to_string()),
    }
}

/// This process's incarnation: an id picked once per process start (the start
/// time in nanoseconds, never 0), published with the worker's stats so that a
/// reader can tell a restarted worker's fresh counters from the old ones
/// (`squall_api::ledger`).
pub fn incarnation() -> u64 {
    static ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        (nanos ^ u64::from(std::process::id())).max(1)
    })
}

pub use squall_api::records::unix_ms;
