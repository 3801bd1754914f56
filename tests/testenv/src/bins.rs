use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// k8s.io/kubernetes release the control plane is built from (keep in sync with provision.sh).
pub const K8S_VERSION: &str = "v1.33.13";
/// etcd release (keep in sync with provision.sh).
pub const ETCD_VERSION: &str = "v3.6.16";
/// helm release (keep in sync with provision.sh).
pub const HELM_VERSION: &str = "v3.22.0";
/// CoreDNS release (keep in sync with provision.sh).
pub const COREDNS_VERSION: &str = "v1.15.0";
/// Apache Kafka release of the test broker (keep in sync with provision.sh).
pub const KAFKA_VERSION: &str = "4.1.1";
/// Name of the cache entry provision.sh builds into.
pub const CACHE_KEY: &str = "k8s-v1.33.13_etcd-v3.6.16_helm-v3.22.0_coredns-v1.15.0";
/// Name of the cache entry holding Storm's multilang libraries and pystorm
/// (keep in sync with provision.sh's STORM_VERSION, PYSTORM_VERSION and
/// STREAMPARSE_VERSION).
pub const MULTILANG_KEY: &str = "multilang-storm-2.8.3_pystorm-3.1.4_streamparse-5.0.1";

/// `${SQUALL_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/squall-testenv}`.
fn cache_root() -> PathBuf {
    if let Some(c) = std::env::var_os("SQUALL_TESTENV_CACHE").filter(|d| !d.is_empty()) {
        PathBuf::from(c)
    } else if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        PathBuf::from(x).join("squall-testenv")
    } else {
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
        home.join(".cache").join("squall-testenv")
    }
}

/// The directory holding the provisioned binaries: `$SQUALL_TESTENV_BIN`, else
/// the default cache path (`<cache root>/<CACHE_KEY>/bin`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SQUALL_TESTENV_BIN").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    cache_root().join(CACHE_KEY).join("bin")
}

/// Storm's multilang libraries as provision.sh fetched them: `storm.py`, `storm.js`
/// and `storm.rb` (from Storm's jars on Maven Central) in the folder itself, and
/// pystorm under `python/`. `$SQUALL_MULTILANG`, else the default cache path; a
/// clear error telling to run `make testenv` when it is missing.
pub fn multilang_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("SQUALL_MULTILANG")
        .filter(|d| !d.is_empty())
        .map_or_else(|| cache_root().join(MULTILANG_KEY), PathBuf::from);
    binary_in(&dir, "storm.py").map(|_| dir)
}

/// The ledger that the multilang example spout (`examples/multilang/sentence_spout.py`)
/// keeps when its `ledger` config is set: how often each message id was acked to
/// it, over every `ledger.*` file (one per spout task) in `dir`.
pub fn spout_ledger(dir: &Path) -> std::io::Result<std::collections::BTreeMap<String, u32>> {
    let mut acks = std::collections::BTreeMap::new();
    for f in std::fs::read_dir(dir)? {
        let f = f?.path();
        if f.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("ledger."))
        {
            for id in std::fs::read_to_string(&f)?.lines() {
                *acks.entry(id.to_string()).or_insert(0) += 1;
            }
        }
    }
    Ok(acks)
}

/// The directory of the provisioned Kafka broker (its jars in `libs/`):
/// `$SQUALL_TESTENV_KAFKA`, else `<cache root>/kafka-<KAFKA_VERSION>`.
pub fn kafka_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SQUALL_TESTENV_KAFKA").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    cache_root().join(format!("kafka-{KAFKA_VERSION}"))
}

/// promcheck as provision.sh built it from `tests/testenv/promcheck`:
/// `$SQUALL_PROMCHECK`, else `<cache root>/promcheck/promcheck`.
pub fn promcheck_binary() -> Result<PathBuf> {
    let path = std::env::var_os("SQUALL_PROMCHECK")
        .filter(|p| !p.is_empty())
        .map_or_else(
            || cache_root().join("promcheck").join("promcheck"),
            PathBuf::from,
        );
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::PromcheckMissing { path })
    }
}

/// The path of a provisioned binary (`etcd`, `kube-apiserver`,
/// `kube-controller-manager`, `helm`); a clear error telling to run
/// `make testenv` when it is missing.
pub fn binary(name: &str) -> Result<PathBuf> {
    binary_in(&bin_dir(), name)
}

fn binary_in(dir: &std::path::Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::BinaryMissing {
            name: name.to_string(),
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The versions here must match the ones provision.sh builds, or the
    /// default cache path would point at nothing.
    #[test]
    fn missing_binary_says_to_run_make_testenv() {
        let err = binary_in(std::path::Path::new("/nonexistent/bin"), "etcd").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("make testenv") && msg.contains("/nonexistent/bin/etcd"),
            "{msg}"
        );
    }

    #[test]
    fn versions_match_provision_script() {
        let script =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/provision.sh")).unwrap();
        for (var, val) in [
            ("K8S_VERSION", K8S_VERSION),
            ("ETCD_VERSION", ETCD_VERSION),
            ("HELM_VERSION", HELM_VERSION),
            ("COREDNS_VERSION", COREDNS_VERSION),
            ("KAFKA_VERSION", KAFKA_VERSION),
        ] {
            assert!(
                script.contains(&format!("{var}=\"{val}\"")),
                "provision.sh does not set {var}=\"{val}\""
            );
        }
        assert_eq!(
            CACHE_KEY,
            format!(
                "k8s-{K8S_VERSION}_etcd-{ETCD_VERSION}_helm-{HELM_VERSION}_coredns-{COREDNS_VERSION}"
            )
        );
    }
}
