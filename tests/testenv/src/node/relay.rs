//! TCP relays from the host's loopback into the node's network namespace.
//!
//! The host never gets a non-loopback address: kubectl, helm and the tests
//! reach the API server (and the state etcd) on `127.0.0.1:<port>`, and the
//! relay dials the real address from inside the namespace. A socket belongs to
//! the namespace of the thread that created it, so one thread joins the
//! namespace (`setns(2)`) and makes every outbound connection; the tokio
//! runtime then drives both halves.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, IoContext, Result};

type DialRequest = (SocketAddr, oneshot::Sender<io::Result<std::net::TcpStream>>);

/// Opens TCP connections from inside a network namespace.
#[derive(Debug, Clone)]
pub struct Dialer {
    tx: mpsc::Sender<DialRequest>,
}

impl Dialer {
    /// Starts the dialing thread inside the namespace at `netns_path`.
    pub fn new(netns_path: &str) -> Result<Dialer> {
        let ns = File::open(netns_path).ctx(|| format!("open {netns_path}"))?;
        let (tx, rx) = mpsc::channel::<DialRequest>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("squall-netns-dialer".into())
            .spawn(move || {
                let joined = setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from);
                let ok = joined.is_ok();
                let _ = ready_tx.send(joined);
                if !ok {
                    return;
                }
                for (addr, reply) in rx {
                    let _ = reply.send(std::net::TcpStream::connect_timeout(
                        &addr,
                        Duration::from_secs(5),
                    ));
                }
            })
            .ctx(|| "spawn the netns dialer".into())?;
        ready_rx
            .recv()
            .map_err(|_| Error::Invalid("netns dialer thread died".into()))?
            .ctx(|| format!("setns({netns_path})"))?;
        Ok(Dialer { tx })
    }

    /// A connection to `addr` as seen from inside the namespace.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((addr, reply))
            .map_err(|_| io::Error::other("netns dialer is gone"))?;
        let std = rx
            .await
            .map_err(|_| io::Error::other("netns dialer is gone"))??;
        std.set_nonblocking(true)?;
        TcpStream::from_std(std)
    }
}

/// A listener on the host's `127.0.0.1` forwarding to an address inside the
/// namespace; stops on drop.
#[derive(Debug)]
pub struct Relay {
    local: SocketAddr,
    target: SocketAddr,
    task: JoinHandle<()>,
}

impl Relay {
    /// Listens on `127.0.0.1:port` (0: any free port) and forwards every
    /// connection to `target` through `dialer`.
    pub async fn start(dialer: &Dialer, port: u16, target: SocketAddr) -> Result<Relay> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .ctx(|| format!("bind relay 127.0.0.1:{port} for {target}"))?;
        let local = listener.local_addr().ctx(|| "relay address".into())?;
        let dialer = dialer.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let dialer = dialer.clone();
                tokio::spawn(async move {
                    match dialer.connect(target).await {
                        Ok(mut outbound) => {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                        Err(e) => tracing::debug!("relay to {target}: {e}"),
                    }
                });
            }
        });
        Ok(Relay {
            local,
            target,
            task,
        })
    }

    /// The host-side address (`127.0.0.1:<port>`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The address inside the namespace.
    pub fn target(&self) -> SocketAddr {
        self.target
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
