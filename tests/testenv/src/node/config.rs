//! Configuration files of the node's daemons (see shared notes, real-node.md).

use std::path::Path;

use super::netns::{BRIDGE, NODE_IP};

/// Pod addresses (one node, so one range).
pub const POD_CIDR: &str = "10.244.0.0/24";
/// The sandbox ("pause") image, imported from the image archives, never pulled.
pub const PAUSE_IMAGE: &str = "localhost/pause:testenv";
/// CoreDNS listens on the node IP; pods get it as their only nameserver.
pub const DNS_IP: &str = NODE_IP;

pub fn containerd(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/ctr/root"
state = "{d}/ctr/state"
[grpc]
  address = "{d}/ctr/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  disable_apparmor = true
  # No CAP_SYS_RESOURCE here: a negative oom_score_adj is refused, so clamp.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni/net.d"
"#
    )
}

pub fn cni(dir: &Path) -> String {
    // ipMasq false: no outbound NAT; the netns has no uplink anyway.
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "squall-net",
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": false,
             "hairpinMode": true,
             "ipam": {"type": "host-local", "dataDir": dir.join("cni/ipam"),
                      "ranges": [[{"subnet": POD_CIDR}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
    .to_string()
}

pub fn kubelet(dir: &Path, ca: &Path) -> String {
    serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs",
        "failSwapOn": false,
        "protectKernelDefaults": false,
        "makeIPTablesUtilChains": false,
        "containerRuntimeEndpoint": format!("unix://{}/ctr/containerd.sock", dir.display()),
        "imageServiceEndpoint": format!("unix://{}/ctr/containerd.sock", dir.display()),
        "address": NODE_IP,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "authorization": {"mode": "Webhook"},
        "authentication": {"anonymous": {"enabled": false}, "webhook": {"enabled": true},
                           "x509": {"clientCAFile": ca}},
        "clusterDomain": "cluster.local",
        "clusterDNS": [DNS_IP],
        // No machine nameserver for pods: CoreDNS is all they get.
        "resolvConf": "",
        "podCIDR": POD_CIDR,
        "maxPods": 60,
        "podLogsDir": dir.join("kubelet/pod-logs"),
        "serializeImagePulls": false,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        // Absolute floors: a developer's nearly full disk must not taint the
        // node with disk-pressure (a percentage of a large disk can be GiBs).
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "256Mi",
                         "imagefs.available": "256Mi", "nodefs.inodesFree": "1%"},
    })
    .to_string()
}

pub fn kube_proxy(kubeconfig: &Path, node: &str) -> String {
    serde_json::json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": kubeconfig},
        "hostnameOverride": node,
        "clusterCIDR": "10.244.0.0/16",
        "bindAddress": NODE_IP,
        "nodePortAddresses": [format!("{NODE_IP}/32")],
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                      "tcpCloseWaitTimeout": "0s"},
        "iptables": {"localhostNodePorts": false, "masqueradeAll": false,
                     "syncPeriod": "10s", "minSyncPeriod": "0s"},
    })
    .to_string()
}

/// No `forward` plugin: names outside the cluster do not resolve.
pub fn corefile(kubeconfig: &Path) -> String {
    format!(
        r#".:53 {{
    bind {DNS_IP}
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
"#,
        kubeconfig.display()
    )
}
