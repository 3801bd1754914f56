//! The command line of a worker slot's two processes, `worker` and
//! `supervisor`: what the operator writes into a worker pod (and the local
//! launcher into its child processes), and what the runtime's CLI parses.
//!
//! Both sides link this module, so a flag renamed on one side and not the
//! other is a compile error or a failing round-trip test in the runtime's CLI,
//! never a crash-looping pod.

use crate::records::TopologyRef;

/// The downward-API variable with the pod's name.
pub const POD_NAME_ENV: &str = "POD_NAME";
/// The downward-API variable with the pod's namespace.
pub const POD_NAMESPACE_ENV: &str = "POD_NAMESPACE";
/// The downward-API variable with the pod's IP.
pub const POD_IP_ENV: &str = "POD_IP";
/// etcd endpoints for `worker` and `supervisor` when `--etcd` is not given.
pub const ETCD_ENV: &str = "SQUALL_ETCD";
/// CA bundle of etcd's serving certificate, when `--etcd-ca-file` is not given.
pub const ETCD_CA_FILE_ENV: &str = "SQUALL_ETCD_CA_FILE";
/// Client certificate for etcd, when `--etcd-cert-file` is not given.
pub const ETCD_CERT_FILE_ENV: &str = "SQUALL_ETCD_CERT_FILE";
/// Client key for etcd, when `--etcd-key-file` is not given.
pub const ETCD_KEY_FILE_ENV: &str = "SQUALL_ETCD_KEY_FILE";

/// The worker's tuple transport port in a pod (Storm's first `supervisor.slots.ports`).
pub const TRANSPORT_PORT: u16 = 6700;
/// The worker's `/metrics`, `/healthz` and `/readyz` port in a pod.
pub const WORKER_HTTP_PORT: u16 = 8080;
/// The worker's channel to its supervisor in a pod.
pub const AGENT_PORT: u16 = 7071;

/// PEM files for a TLS connection to etcd. Empty: plain HTTP.
///
/// This is the one definition of the TLS settings: every binary takes them as
/// `--etcd-ca-file`, `--etcd-cert-file`, `--etcd-key-file` or from the
/// `SQUALL_ETCD_*_FILE` variables (with the `clap` feature, this type is the
/// parser too).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct EtcdTlsFiles {
    /// CA bundle that signed etcd's serving certificate.
    #[cfg_attr(feature = "clap", arg(long = "etcd-ca-file", env = ETCD_CA_FILE_ENV))]
    pub ca_file: Option<String>,
    /// Client certificate, for etcd's client-certificate auth.
    #[cfg_attr(
        feature = "clap",
        arg(long = "etcd-cert-file", env = ETCD_CERT_FILE_ENV, requires = "key_file")
    )]
    pub cert_file: Option<String>,
    /// The client certificate's key.
    #[cfg_attr(
        feature = "clap",
        arg(long = "etcd-key-file", env = ETCD_KEY_FILE_ENV, requires = "cert_file")
    )]
    pub key_file: Option<String>,
}

impl EtcdTlsFiles {
    /// No TLS setting at all.
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }

    fn render(&self, out: &mut Vec<String>) {
        for (flag, value) in [
            ("--etcd-ca-file", &self.ca_file),
            ("--etcd-cert-file", &self.cert_file),
            ("--etcd-key-file", &self.key_file),
        ] {
            if let Some(v) = value {
                out.extend([flag.to_string(), v.clone()]);
            }
        }
    }
}

/// What both processes of a slot are told.
///
/// Addresses are strings because a pod's are only known to the kubelet:
/// `$(POD_IP):6700` is expanded when the container starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInvocation {
    pub topology: TopologyRef,
    pub slot: u32,
    /// etcd endpoints, comma-separated (or `memory:` in tests).
    pub etcd: String,
    /// etcd key prefix.
    pub prefix: String,
    pub etcd_tls: EtcdTlsFiles,
    /// Where the worker serves its supervisor (`host:port`).
    pub agent_addr: String,
    /// The `worker` process's own flags.
    pub worker: WorkerFlags,
    /// The pod name the supervisor records (`--pod`); `None`: derived from the topology and slot.
    pub pod: Option<String>,
}

/// Flags only the `worker` process takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerFlags {
    /// Where the tuple transport listens (`host:port`; port 0: any free port).
    pub listen: String,
    /// The host peers use to reach this worker; `None`: the listen address's IP.
    pub advertise: Option<String>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None`: nowhere.
    pub http: Option<String>,
    /// Tuples per batch; `None`: the runtime's default.
    pub batch_size: Option<usize>,
    /// The directory of the transport's mutual-TLS files (`ca.crt`, `tls.crt`,
    /// `tls.key`); `None`: plaintext.
    pub tls_dir: Option<String>,
}

impl WorkerInvocation {
    /// `--topology`'s value: `namespace/name`.
    pub fn topology_arg(&self) -> String {
        format!("{}/{}", self.topology.namespace, self.topology.name)
    }

    fn common(&self) -> Vec<String> {
        let mut out = vec![
            "--topology".to_string(),
            self.topology_arg(),
            "--slot".to_string(),
            self.slot.to_string(),
            "--etcd".to_string(),
            self.etcd.clone(),
            "--prefix".to_string(),
            self.prefix.clone(),
            "--agent-addr".to_string(),
            self.agent_addr.clone(),
        ];
        self.etcd_tls.render(&mut out);
        out
    }

    /// The topology binary's arguments for the worker: `worker --topology … --slot …`.
    pub fn worker_args(&self) -> Vec<String> {
        let mut out = vec!["worker".to_string()];
        out.extend(self.common());
        let w = &self.worker;
        out.extend(["--listen".to_string(), w.listen.clone()]);
        for (flag, value) in [
            ("--advertise", &w.advertise),
            ("--http", &w.http),
            ("--tls-dir", &w.tls_dir),
        ] {
            if let Some(v) = value {
                out.extend([flag.to_string(), v.clone()]);
            }
        }
        if let Some(n) = w.batch_size {
            out.extend(["--batch-size".to_string(), n.to_string()]);
        }
        out
    }

    /// The supervisor's flags, as the `squall-supervisor` binary takes them
    /// (a topology binary takes them after its `supervisor` subcommand).
    pub fn supervisor_args(&self) -> Vec<String> {
        let mut out = self.common();
        if let Some(pod) = &self.pod {
            out.extend(["--pod".to_string(), pod.clone()]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_flags_are_left_out() {
        let inv = WorkerInvocation {
            topology: TopologyRef {
                namespace: "ns".into(),
                name: "wc".into(),
            },
            slot: 2,
            etcd: "http://e:2379".into(),
            prefix: "/p".into(),
            etcd_tls: EtcdTlsFiles::default(),
            agent_addr: "127.0.0.1:7071".into(),
            worker: WorkerFlags {
                listen: "0.0.0.0:6700".into(),
                advertise: None,
                http: None,
                batch_size: None,
                tls_dir: None,
            },
            pod: None,
        };
        assert_eq!(
            inv.worker_args().join(" "),
            "worker --topology ns/wc --slot 2 --etcd http://e:2379 --prefix /p \
             --agent-addr 127.0.0.1:7071 --listen 0.0.0.0:6700"
        );
        let mut tls = inv.clone();
        tls.worker.tls_dir = Some("/etc/t".into());
        assert!(tls.worker_args().join(" ").ends_with("--tls-dir /etc/t"));
        assert_eq!(
            inv.supervisor_args().join(" "),
            "--topology ns/wc --slot 2 --etcd http://e:2379 --prefix /p --agent-addr 127.0.0.1:7071"
        );
    }
}
