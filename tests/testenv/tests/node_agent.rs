//! The node agent runs Deployments' pods as local processes: distinct pod IPs,
//! env from the downward API, readiness, restarts, GC on deletion, service
//! account credentials under RBAC, volumes, SIGTERM/SIGKILL on deletion.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeSet;
use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use squall_testenv::{ImageMap, NodeAgentConfig, TestCluster};

const TIMEOUT: Duration = Duration::from_secs(90);

fn config() -> NodeAgentConfig {
    NodeAgentConfig {
        images: ImageMap::new().with("testenv-pod", env!("CARGO_BIN_EXE_testenv-pod")),
        ..Default::default()
    }
}

/// Polls `f` until it returns Some, or panics after `timeout` saying `what`.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    squall_testenv::wait_until(what, timeout, f).await.unwrap()
}

fn json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .map_or(0, |c| c.restart_count)
}

fn pod_ip(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

async fn get(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

#[tokio::test]
async fn deployment_pods_run_restart_and_are_garbage_collected() {
    let cluster = TestCluster::start_with(config()).await.unwrap();
    let client = cluster.client();
    let agent = cluster.agent();
    let ns = "apps";
    cluster.control_plane().create_namespace(ns).await.unwrap();

    // The node is registered and Ready.
    let node = Api::<Node>::all(client.clone())
        .get("squall-node-0")
        .await
        .unwrap();
    let ready = node.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        ready
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        "{ready:?}"
    );

    let deploy: Deployment = json(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "web",
                        "image": "registry.example/testenv-pod:dev",
                        "env": [
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                            {"name": "PORT", "value": "8080"},
                            {"name": "ADDR", "value": "$(POD_IP):$(PORT)"}
                        ],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1}
                    }]
                }
            }
        }
    }));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    deployments
        .create(&PostParams::default(), &deploy)
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels("app=web");
    let running = wait_for("2 ready web pods", TIMEOUT, || async {
        let list = pods.list(&lp).await.ok()?.items;
        (list.len() == 2 && list.iter().all(is_ready)).then_some(list)
    })
    .await;

    // Two processes, two distinct loopback pod IPs, env from the downward API.
    let ips: BTreeSet<String> = running.iter().map(pod_ip).collect();
    assert_eq!(ips.len(), 2, "pod IPs not distinct: {ips:?}");
    for ip in &ips {
        assert!(
            ip.starts_with(&format!("127.{}.", agent.ip_block())),
            "{ip}"
        );
    }
    let pids = agent.running_pids(ns, "web-");
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert_ne!(pids[0].1, pids[1].1);
    for p in &running {
        let name = p.metadata.name.clone().unwrap();
        let addr = format!("{}:8080", pod_ip(p));
        assert_eq!(
            get(&addr, "/env/POD_NAME").await.as_deref(),
            Some(name.as_str())
        );
        assert_eq!(get(&addr, "/env/POD_NS").await.as_deref(), Some(ns));
        assert_eq!(
            get(&addr, "/env/NODE").await.as_deref(),
            Some("squall-node-0")
        );
        assert_eq!(get(&addr, "/env/ADDR").await, Some(addr.clone()));
        let kc = get(&addr, "/env/KUBECONFIG").await.unwrap();
        assert!(std::path::Path::new(&kc).is_file(), "KUBECONFIG {kc}");
    }

    // `kubectl logs` reaches the container's output through the agent's
    // kubelet API.
    let first = running[0].metadata.name.clone().unwrap();
    let o = cluster
        .control_plane()
        .kubectl()
        .args(["-n", ns, "logs", &first])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("testenv-pod listening on"),
        "kubectl logs: {out} {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Kill one process: it is restarted, restartCount goes up, ready again.
    let victim = running[0].metadata.name.clone().unwrap();
    let old_pid = agent.kill_container(ns, &victim, "web").unwrap();
    let p = wait_for("restart of the killed container", TIMEOUT, || async {
        let p = pods.get(&victim).await.ok()?;
        (restarts(&p) >= 1 && is_ready(&p)).then_some(p)
    })
    .await;
    let cs = &p.status.unwrap().container_statuses.unwrap()[0];
    let last = cs
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .unwrap();
    assert_eq!(last.exit_code, 128 + 9, "{last:?}");
    let new_pid = agent.container_pid(ns, &victim, "web").unwrap();
    assert_ne!(new_pid, old_pid);
    let other = running[1].metadata.name.clone().unwrap();
    assert_eq!(restarts(&pods.get(&other).await.unwrap()), 0);

    // Delete the Deployment: GC removes ReplicaSet and pods, the agent stops
    // the processes and finishes the deletions.
    deployments
        .delete("web", &DeleteParams::background())
        .await
        .unwrap();
    wait_for("web pods and processes to disappear", TIMEOUT, || async {
        let list = pods.list(&lp).await.ok()?.items;
        (list.is_empty() && agent.running_pids(ns, "web-").is_empty()).then_some(())
    })
    .await;
    for (_, pid) in pids.iter().chain([(pids[0].0.clone(), new_pid)].iter()) {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} still alive"
        );
    }
}

#[tokio::test]
async fn service_account_credentials_rbac_volumes_and_graceful_delete() {
    let cluster = TestCluster::start_with(config()).await.unwrap();
    let client = cluster.client();
    let agent = cluster.agent();
    let cp = cluster.control_plane();
    let ns = "rbac";
    cp.create_namespace(ns).await.unwrap();
    let o = cp
        .kubectl()
        .args(["-n", ns, "create", "serviceaccount", "reader"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    cms.create(
        &PostParams::default(),
        &json(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings"},
            "data": {"greeting": "hello from a configmap"}
        })),
    )
    .await
    .unwrap();
    let o = cp
        .kubectl()
        .args([
            "-n",
            ns,
            "create",
            "secret",
            "generic",
            "creds",
            "--from-literal=password=s3cret",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    // kubectl inside a pod talks to the API with the pod's token (KUBECONFIG).
    let kubectl_pod = |name: &str| -> Pod {
        json(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "serviceAccountName": "reader",
                "restartPolicy": "Never",
                "containers": [{
                    "name": "main", "image": "testenv-pod",
                    "command": ["kubectl", "get", "configmaps", "-o", "name"]
                }]
            }
        }))
    };
    let phase = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default()
    };
    let finished = |name: String| {
        let pods = pods.clone();
        async move {
            wait_for(&format!("pod {name} to finish"), TIMEOUT, || async {
                let p = pods.get(&name).await.ok()?;
                matches!(phase(&p).as_str(), "Succeeded" | "Failed").then_some(p)
            })
            .await
        }
    };

    // Without a Role: forbidden, the pod fails with the exit code reported.
    pods.create(&PostParams::default(), &kubectl_pod("denied"))
        .await
        .unwrap();
    let p = finished("denied".into()).await;
    assert_eq!(phase(&p), "Failed");
    let t = p.status.unwrap().container_statuses.unwrap()[0].clone();
    assert_eq!(t.state.unwrap().terminated.unwrap().exit_code, 1);
    let logs = agent.read_logs(ns, "denied", "main");
    assert!(
        logs.contains("forbidden") && logs.contains("system:serviceaccount:rbac:reader"),
        "{logs}"
    );

    // Grant it: the same command succeeds.
    for args in [
        vec![
            "create",
            "role",
            "cm-reader",
            "--verb=get,list",
            "--resource=configmaps",
        ],
        vec![
            "create",
            "rolebinding",
            "cm-reader",
            "--role=cm-reader",
            "--serviceaccount=rbac:reader",
        ],
    ] {
        let o = cp.kubectl().args(["-n", ns]).args(&args).output().unwrap();
        assert!(o.status.success(), "{o:?}");
    }
    pods.create(&PostParams::default(), &kubectl_pod("allowed"))
        .await
        .unwrap();
    let p = finished("allowed".into()).await;
    assert_eq!(
        phase(&p),
        "Succeeded",
        "{}",
        agent.read_logs(ns, "allowed", "main")
    );
    let logs = agent.read_logs(ns, "allowed", "main");
    assert!(logs.contains("configmap/settings"), "{logs}");

    // Volumes: a configMap mounted at /etc/app; the path in env is rewritten
    // to the local directory; an emptyDir is passed through SQUALL_MOUNT_*.
    // An exec readiness probe gates readiness. The process ignores SIGTERM,
    // so deletion must wait the grace period and SIGKILL it.
    pods.create(
        &PostParams::default(),
        &json(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "vols"},
            "spec": {
                "terminationGracePeriodSeconds": 2,
                "volumes": [
                    {"name": "conf", "configMap": {"name": "settings"}},
                    {"name": "scratch", "emptyDir": {}},
                    {"name": "creds", "secret": {"secretName": "creds"}}
                ],
                "containers": [{
                    "name": "main", "image": "testenv-pod",
                    "command": ["sh", "-c", "trap '' TERM; touch \"$SQUALL_MOUNT_SCRATCH/started\"; exec testenv-pod"],
                    "env": [
                        {"name": "GREETING_FILE", "value": "/etc/app/greeting"},
                        {"name": "PASSWORD_FILE", "value": "/var/creds/password"},
                        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
                    ],
                    "volumeMounts": [
                        {"name": "conf", "mountPath": "/etc/app"},
                        {"name": "scratch", "mountPath": "/scratch"},
                        {"name": "creds", "mountPath": "/var/creds", "readOnly": true}
                    ],
                    "readinessProbe": {"exec": {"command": ["sh", "-c", "test -f \"$SQUALL_MOUNT_SCRATCH/started\""]}, "periodSeconds": 1}
                }]
            }
        })),
    )
    .await
    .unwrap();
    let _ = cluster; // keep alive
    let p = wait_for("pod vols ready", TIMEOUT, || async {
        let p = pods.get("vols").await.ok()?;
        is_ready(&p).then_some(p)
    })
    .await;
    let addr = format!("{}:8080", pod_ip(&p));
    let file = get(&addr, "/env/GREETING_FILE").await.unwrap();
    assert_ne!(file, "/etc/app/greeting", "mount path was not rewritten");
    assert_eq!(
        get(&addr, &format!("/file?{file}")).await.as_deref(),
        Some("hello from a configmap")
    );
    let file = get(&addr, "/env/PASSWORD_FILE").await.unwrap();
    assert_eq!(
        get(&addr, &format!("/file?{file}")).await.as_deref(),
        Some("s3cret")
    );
    assert_eq!(get(&addr, "/env/PASSWORD").await.as_deref(), Some("s3cret"));
    assert_eq!(
        get(&addr, "/env/GREETING").await.as_deref(),
        Some("hello from a configmap")
    );

    let pid = agent.container_pid(ns, "vols", "main").unwrap();
    let t0 = Instant::now();
    pods.delete("vols", &DeleteParams::default()).await.unwrap();
    wait_for("pod vols deleted", TIMEOUT, || async {
        pods.get_opt("vols").await.ok()?.is_none().then_some(())
    })
    .await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "SIGTERM-ignoring pod deleted after only {took:?}"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} survived deletion"
    );
}

#[tokio::test]
async fn restart_policies_backoff_liveness_and_init_containers() {
    let cluster = TestCluster::start_with(config()).await.unwrap();
    let client = cluster.client();
    let agent = cluster.agent();
    let ns = "policies";
    cluster.control_plane().create_namespace(ns).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mk = |name: &str, policy: &str, exit_code: i32| -> Pod {
        json(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": policy,
                "containers": [{
                    "name": "main", "image": "testenv-pod",
                    "env": [
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "TESTENV_EXIT_AFTER_MS", "value": "100"},
                        {"name": "TESTENV_EXIT_CODE", "value": exit_code.to_string()}
                    ]
                }]
            }
        }))
    };
    let t0 = Instant::now();
    pods.create(&PostParams::default(), &mk("crashy", "OnFailure", 3))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &mk("done", "OnFailure", 0))
        .await
        .unwrap();

    // OnFailure + exit 0: Succeeded, never restarted.
    let p = wait_for("pod done to succeed", TIMEOUT, || async {
        let p = pods.get("done").await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Succeeded")).then_some(p)
    })
    .await;
    assert_eq!(restarts(&p), 0);

    // OnFailure + exit 3: restarted with back-off (0.5 s, 1 s, 2 s, ...), so
    // three restarts take at least 3.5 s although each run lasts 0.1 s.
    let p = wait_for("pod crashy to restart 3 times", TIMEOUT, || async {
        let p = pods.get("crashy").await.ok()?;
        (restarts(&p) >= 3).then_some(p)
    })
    .await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "3 restarts after only {took:?}: no back-off"
    );
    let cs = &p.status.unwrap().container_statuses.unwrap()[0];
    let last = cs
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .unwrap();
    assert_eq!(last.exit_code, 3);
    let logs = agent.read_logs(ns, "crashy", "main");
    assert!(logs.matches("exiting with 3").count() >= 3, "{logs}");

    // A failing liveness probe kills and restarts the container; an init
    // container runs first and leaves a file in a shared emptyDir.
    pods.create(
        &PostParams::default(),
        &json(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "live"},
            "spec": {
                "volumes": [{"name": "work", "emptyDir": {}}],
                "initContainers": [{
                    "name": "init", "image": "testenv-pod",
                    "command": ["sh", "-c", "echo from-init > \"$SQUALL_MOUNT_WORK/init.txt\""],
                    "volumeMounts": [{"name": "work", "mountPath": "/work"}]
                }],
                "containers": [{
                    "name": "main", "image": "testenv-pod",
                    "env": [
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "INIT_FILE", "value": "/work/init.txt"}
                    ],
                    "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                    "livenessProbe": {
                        "httpGet": {"path": "/healthz", "port": 9999},
                        "initialDelaySeconds": 1, "periodSeconds": 1, "failureThreshold": 2
                    }
                }]
            }
        })),
    )
    .await
    .unwrap();
    let p = wait_for("pod live running", TIMEOUT, || async {
        let p = pods.get("live").await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
    })
    .await;
    let init = &p
        .status
        .as_ref()
        .unwrap()
        .init_container_statuses
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        init.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        0
    );
    let addr = format!("{}:8080", pod_ip(&p));
    // (Both reads in one attempt: the liveness probe restarts the container
    // every few seconds, and a read may fall between two runs.)
    let content = wait_for("main container serving the init file", TIMEOUT, || async {
        let file = get(&addr, "/env/INIT_FILE").await?;
        get(&addr, &format!("/file?{file}")).await
    })
    .await;
    assert_eq!(content, "from-init\n");
    let p = wait_for("liveness restart", TIMEOUT, || async {
        let p = pods.get("live").await.ok()?;
        (restarts(&p) >= 1).then_some(p)
    })
    .await;
    let cs = &p.status.unwrap().container_statuses.unwrap()[0];
    let last = cs
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .unwrap();
    assert_eq!(last.exit_code, 137, "{last:?}");
}

#[tokio::test]
async fn statefulset_pod_force_deleted_and_recreated_under_the_same_name() {
    let cluster = TestCluster::start_with(config()).await.unwrap();
    let client = cluster.client();
    let agent = cluster.agent();
    let ns = "sts";
    cluster.control_plane().create_namespace(ns).await.unwrap();
    let sts: k8s_openapi::api::apps::v1::StatefulSet = json(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {
            "replicas": 1,
            "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": "main", "image": "testenv-pod",
                        "command": ["sh", "-c", "trap '' TERM; exec testenv-pod"],
                        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
                    }]
                }
            }
        }
    }));
    Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sts)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let first = wait_for("db-0 ready", TIMEOUT, || async {
        let p = pods.get("db-0").await.ok()?;
        is_ready(&p).then_some(p)
    })
    .await;
    let old_pid = agent.container_pid(ns, "db-0", "main").unwrap();

    // Force deletion: the object goes at once, the StatefulSet recreates db-0
    // while the old process (which ignores SIGTERM) is still being killed.
    pods.delete(
        "db-0",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let second = wait_for("a new db-0 ready", TIMEOUT, || async {
        let p = pods.get("db-0").await.ok()?;
        (p.metadata.uid != first.metadata.uid && is_ready(&p)).then_some(p)
    })
    .await;
    assert_ne!(pod_ip(&second), pod_ip(&first));
    wait_for("the old db-0 process to be gone", TIMEOUT, || async {
        (!std::path::Path::new(&format!("/proc/{old_pid}")).exists()).then_some(())
    })
    .await;
    let running = agent.running_pids(ns, "db-");
    assert_eq!(running.len(), 1, "{running:?}");
    assert_ne!(running[0].1, old_pid);
    assert_eq!(agent.container_pid(ns, "db-0", "main"), Some(running[0].1));
}
