//! The volumes of a worker pod and where its containers mount them: the etcd
//! client TLS Secret (both containers), the transport's mutual TLS Secret (the
//! worker alone), a writable `/tmp` for multilang subprocesses, and the
//! template's own volumes.

use k8s_openapi::api::core::v1::{SecretVolumeSource, Volume, VolumeMount};
use squall_api::invocation::EtcdTlsFiles;
use std::time::Duration;

use squall_api::Topology;
use squall_api::topology::WorkerTemplate;

/// Where worker pods mount the etcd TLS Secret.
pub const ETCD_TLS_DIR: &str = "/etc/squall/etcd-tls";

/// Where the worker container mounts its topology's transport TLS Secret.
pub const TRANSPORT_TLS_DIR: &str = "/etc/squall/transport-tls";

/// The worker's writable `/tmp` when it runs multilang subprocesses.
const SHELL_TMP_VOLUME: &str = "squall-tmp";

/// The Secret with a topology's transport TLS files (`ca.crt`, `tls.crt`,
/// `tls.key`) for rotation period `epoch` (see [`transport_tls_epoch`]), which
/// the operator creates before the first pod that mounts it. Period 0 keeps
/// the name of the operators before rotation, so their pods do not roll.
pub fn transport_tls_secret(topology: &str, epoch: u64) -> String {
    match epoch {
        0 => format!("{topology}-transport-tls"),
        n => format!("{topology}-transport-tls-{n}"),
    }
}

/// Slack on both ends of a certificate's validity, for clocks that disagree.
const CLOCK_SKEW_MS: u64 = 3_600_000;

/// The rotation period of `topo`'s transport certificates at `now_ms`: the
/// periods count from the Topology's creation. Always 0 without rotation, or
/// for an object without a creation time.
pub fn transport_tls_epoch(topo: &Topology, rotation: Option<Duration>, now_ms: u64) -> u64 {
    match (rotation, created_ms(topo)) {
        (Some(every), Some(created)) if every.as_millis() > 0 => {
            now_ms.saturating_sub(created) / every.as_millis() as u64
        }
        _ => 0,
    }
}

/// When period `epoch`'s certificates are valid (unix ms): from an hour before
/// the period starts to an hour after the next one ends, so the pods on them
/// have a whole period to roll to the next ones. `None` without rotation:
/// certificates that do not expire in practice.
pub fn transport_tls_validity(
    topo: &Topology,
    rotation: Option<Duration>,
    epoch: u64,
) -> Option<(u64, u64)> {
    let every = rotation.filter(|d| d.as_millis() > 0)?.as_millis() as u64;
    let start = created_ms(topo)? + epoch * every;
    Some((
        start.saturating_sub(CLOCK_SKEW_MS),
        start + 2 * every + CLOCK_SKEW_MS,
    ))
}

fn created_ms(topo: &Topology) -> Option<u64> {
    let t = topo.metadata.creation_timestamp.as_ref()?;
    u64::try_from(t.0.as_millisecond()).ok()
}

/// A worker pod's volumes, the mounts of each container, and the etcd TLS
/// files that both containers' flags name.
pub(super) struct PodVolumes {
    pub(super) volumes: Vec<Volume>,
    pub(super) worker_mounts: Vec<VolumeMount>,
    /// `None` when the supervisor mounts nothing.
    pub(super) supervisor_mounts: Option<Vec<VolumeMount>>,
    pub(super) etcd_tls: EtcdTlsFiles,
}

/// The volumes of topology `name`'s worker pod: the etcd TLS Secret, if
/// any, first; then the transport TLS; then `/tmp` if `shells` (the root
/// file system is read-only, and subprocesses write their pidDir there);
/// then the template's.
pub(super) fn pod_volumes(
    name: &str,
    etcd_tls_secret: Option<&str>,
    transport_tls_epoch: u64,
    shells: bool,
    template: &WorkerTemplate,
) -> PodVolumes {
    // Workers and supervisors take the same TLS settings the operator does.
    let mut etcd_tls = EtcdTlsFiles::default();
    let (volumes, mounts) = match etcd_tls_secret {
        Some(secret) => {
            etcd_tls = EtcdTlsFiles {
                ca_file: Some(format!("{ETCD_TLS_DIR}/ca.crt")),
                cert_file: Some(format!("{ETCD_TLS_DIR}/tls.crt")),
                key_file: Some(format!("{ETCD_TLS_DIR}/tls.key")),
            };
            let volume = Volume {
                name: "etcd-tls".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let mount = VolumeMount {
                name: "etcd-tls".into(),
                mount_path: ETCD_TLS_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            };
            (Some(vec![volume]), Some(vec![mount]))
        }
        None => (None, None),
    };
    let mut pod_volumes = volumes.unwrap_or_default();
    let mut worker_mounts = mounts.clone().unwrap_or_default();
    // Mutual TLS between workers: the worker container alone reads it.
    pod_volumes.push(Volume {
        name: "transport-tls".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(transport_tls_secret(name, transport_tls_epoch)),
            ..Default::default()
        }),
        ..Default::default()
    });
    worker_mounts.push(VolumeMount {
        name: "transport-tls".into(),
        mount_path: TRANSPORT_TLS_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    });
    if shells {
        pod_volumes.push(Volume {
            name: SHELL_TMP_VOLUME.into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        });
        worker_mounts.push(VolumeMount {
            name: SHELL_TMP_VOLUME.into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        });
    }
    pod_volumes.extend(template.volumes.iter().cloned());
    worker_mounts.extend(template.volume_mounts.iter().cloned());
    PodVolumes {
        volumes: pod_volumes,
        worker_mounts,
        supervisor_mounts: mounts,
        etcd_tls,
    }
}
