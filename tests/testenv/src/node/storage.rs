//! A default StorageClass and a small provisioner for it: each claim gets a
//! hostPath volume in the node's state directory, removed with its claim.
//! Enough for the chart's bundled etcd (a StatefulSet with a PVC).

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use crate::error::Result;

/// The default StorageClass of the test cluster.
pub const STORAGE_CLASS: &str = "squall-local";
const PROVISIONER: &str = "squall.dev/local-hostpath";

/// Creates the StorageClass (default class, immediate binding).
pub async fn install(client: &kube::Client) -> Result<()> {
    let sc: StorageClass = serde_json::from_value(serde_json::json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS,
                     "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }))?;
    match Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &sc)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Provisions and deletes volumes until the task is aborted.
pub async fn run(client: kube::Client, root: PathBuf) {
    loop {
        if let Err(e) = pass(&client, &root).await {
            tracing::debug!("storage provisioner: {e}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn pass(client: &kube::Client, root: &Path) -> Result<()> {
    let pvcs: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for pvc in pvcs.list(&ListParams::default()).await? {
        let spec = pvc.spec.clone().unwrap_or_default();
        let pending = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
        if !pending
            || spec.volume_name.is_some()
            || spec.storage_class_name.as_deref() != Some(STORAGE_CLASS)
        {
            continue;
        }
        let (Some(ns), Some(name), Some(uid)) = (
            pvc.metadata.namespace.clone(),
            pvc.metadata.name.clone(),
            pvc.metadata.uid.clone(),
        ) else {
            continue;
        };
        let size = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone())
            .unwrap_or_else(|| "1Gi".into());
        let path = root.join(&uid);
        std::fs::create_dir_all(&path).map_err(|e| {
            crate::Error::Invalid(format!("create volume dir {}: {e}", path.display()))
        })?;
        // Any uid may write: pods run as non-root users, and hostPath ignores fsGroup.
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777));
        }
        let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": format!("pvc-{uid}"),
                         "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": spec.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": STORAGE_CLASS,
                "hostPath": {"path": path, "type": "DirectoryOrCreate"},
                "claimRef": {"namespace": ns, "name": name, "uid": uid},
            }
        }))?;
        match pvs.create(&PostParams::default(), &pv).await {
            Ok(_) => tracing::info!("provisioned {} for {ns}/{name}", path.display()),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    for pv in pvs.list(&ListParams::default()).await? {
        let ours = pv
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.as_deref())
            == Some(STORAGE_CLASS);
        let released = matches!(
            pv.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Released") | Some("Failed")
        );
        if !ours || !released {
            continue;
        }
        let Some(name) = pv.metadata.name.clone() else {
            continue;
        };
        if let Some(path) = pv
            .spec
            .as_ref()
            .and_then(|s| s.host_path.as_ref())
            .map(|h| PathBuf::from(&h.path))
            && path.starts_with(root)
        {
            let _ = std::fs::remove_dir_all(&path);
        }
        let _ = pvs.delete(&name, &DeleteParams::default()).await;
    }
    Ok(())
}
