//! The node's network namespace: every non-loopback address of a test
//! cluster (node IP, bridge, pods, services) lives here, and nothing in it is
//! routed off the machine (it has no uplink at all).

use std::process::Command;

use crate::error::{Error, IoContext, Result};

/// The node's address, on the namespace's own `lo` (this kernel has no dummy
/// netdev). Pods reach it through the bridge gateway (INPUT), the host never does.
pub const NODE_IP: &str = "172.31.255.1";
/// The CNI bridge inside the namespace.
pub const BRIDGE: &str = "cni-squall0";
/// Where `ip netns add` puts its handles.
pub const NETNS_DIR: &str = "/run/netns";

/// A network namespace created with `ip netns add`, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    /// Deleted on drop only by the process that created it.
    deleted: bool,
}

/// Runs a command to completion; an error names it and carries its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().ctx(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl NetNs {
    /// Creates the namespace with `lo` up and [`NODE_IP`] on it, forwarding
    /// confined to the cluster bridge, and bridged traffic through iptables
    /// (kube-proxy's Service rules must see pod-to-pod traffic on the bridge).
    pub fn create(name: &str) -> Result<NetNs> {
        // A leftover of a crashed run under the same name goes first.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = NetNs {
            name: name.to_string(),
            deleted: false,
        };
        run(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
        run(Command::new("ip").args([
            "-n",
            name,
            "addr",
            "add",
            &format!("{NODE_IP}/32"),
            "dev",
            "lo",
        ]))?;
        ns.exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"])?;
        ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        // Forwarding only between the bridge's own ports: nothing leaves.
        ns.exec(&[
            "iptables", "-I", "FORWARD", "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP",
        ])?;
        ns.exec(&[
            "iptables", "-I", "FORWARD", "-o", BRIDGE, "!", "-i", BRIDGE, "-j", "DROP",
        ])?;
        Ok(ns)
    }

    /// An existing namespace, left alone on drop (a test process joining the
    /// cluster that `with-cluster` owns).
    pub fn open(name: &str) -> Result<NetNs> {
        let path = format!("{NETNS_DIR}/{name}");
        if !std::path::Path::new(&path).exists() {
            return Err(Error::Invalid(format!("no network namespace {path}")));
        }
        Ok(NetNs {
            name: name.to_string(),
            deleted: true,
        })
    }

    /// The namespace's name (`ip netns` handle).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for `nsenter --net=` and `setns(2)`.
    pub fn path(&self) -> String {
        format!("{NETNS_DIR}/{}", self.name)
    }

    /// `cmd` wrapped to run inside the namespace. Only the network namespace
    /// changes (`nsenter --net`): `ip netns exec` would also give the process
    /// a private mount namespace with a fresh /sys, hiding the cgroup tree
    /// from the kubelet and its volume mounts from containerd.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs a short command inside the namespace.
    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| Error::Invalid("empty command".into()))?;
        let mut c = self.command(program);
        c.args(args);
        run(&mut c)
    }

    /// Deletes the namespace now (also done on drop).
    pub fn delete(&mut self) {
        if !self.deleted {
            self.deleted = true;
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .output();
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        self.delete();
    }
}
