//! The control plane and a bare etcd come up, answer, and go away cleanly.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use squall_testenv::{ControlPlane, Etcd};

#[tokio::test]
async fn bare_etcd_serves_and_is_removed_on_drop() {
    let etcd = Etcd::start().await.unwrap();
    assert!(etcd.client_url().starts_with("http://127.0.0.1:"));
    let dir = etcd.dir().to_path_buf();
    let pid = etcd.pid();
    // etcd's v3 JSON gateway: put then range a key.
    let addr = etcd.client_addr();
    let put = http_post(addr, "/v3/kv/put", r#"{"key":"c3F1YWxs","value":"MQ=="}"#).await;
    assert!(put.contains("\"header\""), "put answered: {put}");
    let get = http_post(addr, "/v3/kv/range", r#"{"key":"c3F1YWxs"}"#).await;
    assert!(get.contains("\"MQ==\""), "range answered: {get}");
    drop(etcd);
    assert!(
        !dir.exists(),
        "etcd temp dir left behind: {}",
        dir.display()
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "etcd process {pid} still exists"
    );
}

#[tokio::test]
async fn apiserver_is_ready_and_kubectl_works() {
    let cp = ControlPlane::start().await.unwrap();
    let client = cp.client();
    let readyz = client
        .request_text(http::Request::get("/readyz").body(Vec::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(readyz.trim(), "ok");

    // The admin identity is authorized through RBAC (system:masters).
    let nss: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = nss
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"kube-system".to_string()), "{names:?}");

    // kubectl with the written kubeconfig, and the version we built.
    let out = cp
        .kubectl()
        .args(["version", "-o", "json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl version: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(squall_testenv::K8S_VERSION), "{text}");

    // helm from the cache talks to it too.
    let out = cp
        .helm()
        .unwrap()
        .args(["list", "--all-namespaces"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm list: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = cp.dir().to_path_buf();
    let etcd_dir = cp.etcd().dir().to_path_buf();
    drop(cp);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!dir.exists() && !etcd_dir.exists(), "temp dirs left behind");
}

async fn http_post(addr: std::net::SocketAddr, path: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}
