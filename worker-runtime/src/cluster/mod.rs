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

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
