//! The shared real node keeps the network rule: every non-loopback address
//! lives in its own network namespace, nothing there routes off the machine,
//! and CoreDNS answers cluster names and forwards nothing.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use squall_testenv::TestCluster;

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a thread that joined the node's network namespace.
fn in_node<T: Send>(cluster: &TestCluster, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{}", cluster.info().netns);
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

/// An A query; returns (rcode, the A records of the answer).
fn resolve(server: &str, name: &str) -> (u8, Vec<Ipv4Addr>) {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.send_to(&q, server).unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).unwrap();
    let r = &buf[..n];
    assert_eq!(&r[..2], &[0x12, 0x34], "answer to our query");
    let rcode = r[3] & 0x0f;
    let answers = u16::from_be_bytes([r[6], r[7]]);
    // Skip the question (our own bytes), then read each answer record.
    let mut i = q.len();
    let mut out = Vec::new();
    for _ in 0..answers {
        // A compressed name pointer (2 bytes) is what CoreDNS sends here.
        i += if r[i] & 0xc0 == 0xc0 {
            2
        } else {
            r[i..].iter().position(|b| *b == 0).unwrap() + 1
        };
        let (typ, len) = (
            u16::from_be_bytes([r[i], r[i + 1]]),
            u16::from_be_bytes([r[i + 8], r[i + 9]]) as usize,
        );
        i += 10;
        if typ == 1 && len == 4 {
            out.push(Ipv4Addr::new(r[i], r[i + 1], r[i + 2], r[i + 3]));
        }
        i += len;
    }
    (rcode, out)
}

#[tokio::test]
async fn every_cluster_address_lives_in_the_node_namespace_with_no_way_out() {
    let cluster = TestCluster::shared().await.unwrap();
    let netns = cluster.info().netns.clone();
    let node_ip = cluster.info().node_ip.clone();
    // Inside: the node IP on lo, and no default route, and no device but lo,
    // the cluster bridge and the pods' veths.
    let addrs = ip(&["-n", &netns, "-o", "addr"]);
    assert!(
        addrs.contains(&format!("lo    inet {node_ip}/32")),
        "{addrs}"
    );
    let routes = ip(&["-n", &netns, "route"]);
    assert!(!routes.contains("default"), "a default route: {routes}");
    let links = ip(&["-n", &netns, "-o", "link"]);
    for line in links.lines() {
        let name = line.split(':').nth(1).unwrap_or("").trim();
        assert!(
            name == "lo" || name.starts_with("cni-squall0") || name.starts_with("veth"),
            "unexpected device in the node namespace: {line}"
        );
    }
    assert!(links.contains("lo:"), "{links}");
    // Outside: the host has none of the cluster's addresses.
    let host = ip(&["-o", "addr"]);
    for cidr in [node_ip.as_str(), "10.244.", "10.0.0."] {
        assert!(!host.contains(cidr), "{cidr} on the host: {host}");
    }
    // Forwarding off the bridge is dropped.
    let out = Command::new("nsenter")
        .args([
            &format!("--net=/run/netns/{netns}"),
            "--",
            "iptables",
            "-S",
            "FORWARD",
        ])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&out.stdout);
    assert!(
        rules.contains("-A FORWARD -i cni-squall0 ! -o cni-squall0 -j DROP"),
        "{rules}"
    );
}

#[tokio::test]
async fn coredns_answers_cluster_names_and_forwards_nothing() {
    let cluster = TestCluster::shared().await.unwrap();
    let server = format!("{}:53", cluster.info().node_ip);
    let (rcode, a) = in_node(&cluster, || {
        resolve(&server, "kubernetes.default.svc.cluster.local")
    });
    assert_eq!((rcode, a), (0, vec![Ipv4Addr::new(10, 0, 0, 1)]));
    // A name outside the cluster gets no answer from anywhere: no upstream.
    let (rcode, a) = in_node(&cluster, || resolve(&server, "example.com"));
    assert!(a.is_empty() && rcode != 0, "rcode {rcode}, answers {a:?}");
}
