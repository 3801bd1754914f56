//! The admin endpoint every Squall binary serves: `/metrics` (Prometheus
//! text), `/healthz` (the process serves) and `/readyz` (it can do its job).
//!
//! Scrapes and probes are rare and tiny, so a blocking listener on one thread
//! is enough: it works the same in the operator's async runtime and in a
//! local-mode process that has none, and keeps an HTTP stack out of both.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The Prometheus text format's content type.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// What the three endpoints answer.
#[derive(Clone)]
pub struct Endpoints {
    /// The body of `/metrics`: Prometheus text. The coordination metrics of
    /// this crate are appended to it.
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
    /// `Ok` for a 200 on `/readyz`; `Err(why)` for a 503 that says why.
    pub ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
}

impl Endpoints {
    /// Always ready: for a process that is ready as soon as it serves.
    pub fn always_ready(metrics: impl Fn() -> String + Send + Sync + 'static) -> Self {
        Endpoints {
            metrics: Arc::new(metrics),
            ready: Arc::new(|| Ok(())),
        }
    }

    /// Status line, content type and body for a request path.
    fn answer(&self, path: &str) -> Answer {
        match path {
            "/metrics" => {
                let mut body = (self.metrics)();
                body.push_str(&coord_metrics());
                ("200 OK", PROMETHEUS_TEXT, body)
            }
            "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
            "/readyz" => match (self.ready)() {
                Ok(()) => ("200 OK", "text/plain", "ok\n".to_string()),
                Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
            },
            _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
        }
    }
}

/// The metrics of this crate, in Prometheus text.
fn coord_metrics() -> String {
    let name = "squall_coord_corrupt_records_total";
    let mut out = String::new();
    crate::prom::header(
        &mut out,
        name,
        "etcd records skipped because they did not decode.",
        crate::prom::Kind::Counter,
    );
    out.push_str(&format!("{name} {}\n", crate::corrupt_records()));
    out
}

/// Serve `endpoints` on `addr` from a background thread, for the life of the
/// process. Returns the bound address (useful with port 0).
///
/// # Errors
///
/// When `addr` cannot be bound.
pub fn serve(addr: SocketAddr, endpoints: Endpoints) -> std::io::Result<SocketAddr> {
    serve_with(addr, "squall-admin", move |path| endpoints.answer(path))
}

/// What a GET of a path answers: status line, content type and body.
pub(crate) type Answer = (&'static str, &'static str, String);

/// Serve GET requests on `addr` from a background thread named `name`: the
/// one small HTTP server of every Squall binary (admin endpoints, web UI).
/// Each connection gets a thread of its own, at most [`MAX_CONNECTIONS`] at
/// once (more are closed at once), so a browser's idle preconnected socket
/// cannot hold up a scrape or a probe for the read timeout.
pub(crate) fn serve_with(
    addr: SocketAddr,
    name: &str,
    route: impl Fn(&str) -> Answer + Send + Sync + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let route = Arc::new(route);
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let thread_name = name.to_string();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    open.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                let (route, done) = (route.clone(), open.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name(thread_name.clone())
                        .spawn(move || {
                            if let Err(e) = answer(stream, &*route) {
                                tracing::debug!(error = %e, "http request failed");
                            }
                            done.fetch_sub(1, Ordering::AcqRel);
                        });
                if spawned.is_err() {
                    open.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })?;
    Ok(local)
}

/// Bytes of a request (line and headers) that [`serve_with`] reads.
pub const MAX_REQUEST: u64 = 16 * 1024;

/// Connections served at once by [`serve_with`].
pub const MAX_CONNECTIONS: usize = 16;

fn answer(mut stream: TcpStream, route: &dyn Fn(&str) -> Answer) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    // A request is a GET of a short path: whatever a client sends past
    // MAX_REQUEST bytes is not read, so a line without an end cannot grow
    // memory.
    let mut reader = BufReader::new(std::io::Read::take(stream.try_clone()?, MAX_REQUEST));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the headers; the body of a GET is empty.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    let (status, content_type, body) = route(path);
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::io::Read;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_metrics_health_and_readiness() {
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = ready.clone();
        let endpoints = Endpoints {
            metrics: Arc::new(|| "my_metric 1\n".to_string()),
            ready: Arc::new(move || {
                if r.load(std::sync::atomic::Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err("starting".into())
                }
            }),
        };
        let addr = serve("127.0.0.1:0".parse().unwrap(), endpoints).unwrap();
        let m = get(addr, "/metrics?x=1");
        assert!(m.starts_with("HTTP/1.1 200 OK"), "{m}");
        assert!(
            m.contains(PROMETHEUS_TEXT) && m.contains("my_metric 1"),
            "{m}"
        );
        assert!(m.contains("squall_coord_corrupt_records_total"), "{m}");
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 200"));
        let not_ready = get(addr, "/readyz");
        assert!(not_ready.starts_with("HTTP/1.1 503") && not_ready.ends_with("starting\n"));
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(get(addr, "/readyz").starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
        // Garbage, an endless line and an oversized request are answered or
        // dropped, and the server goes on serving.
        for junk in [
            b"\x00\xff\xfe garbage\r\n\r\n".to_vec(),
            vec![b'a'; 200_000],
            b"GET /metrics".repeat(10_000),
            b"\r\n\r\n".to_vec(),
        ] {
            let mut s = TcpStream::connect(addr).unwrap();
            let _ = s.write_all(&junk);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            let text = String::from_utf8_lossy(&out);
            assert!(out.is_empty() || text.starts_with("HTTP/1.1 "), "{text}");
        }
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 200"));
        // A connection that sends nothing (a browser's preconnect) does not
        // hold up the next request.
        let idle = TcpStream::connect(addr).unwrap();
        assert!(get(addr, "/healthz").starts_with("HTTP/1.1 200"));
        drop(idle);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 64,
            ..Default::default()
        })]
        /// Random requests, whole or cut short, well-formed request lines
        /// with random paths among them: each gets an HTTP answer or a closed
        /// connection, and the one server goes on answering.
        #[test]
        fn random_requests_never_stop_the_server(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096),
            path in "[ -~]{0,64}",
            whole in proptest::bool::ANY,
        ) {
            use std::sync::OnceLock;
            static ADDR: OnceLock<SocketAddr> = OnceLock::new();
            let addr = *ADDR.get_or_init(|| {
                let endpoints = Endpoints {
                    metrics: Arc::new(String::new),
                    ready: Arc::new(|| Ok(())),
                };
                serve("127.0.0.1:0".parse().unwrap(), endpoints).unwrap()
            });
            for request in [bytes, format!("GET /{path} HTTP/1.1\r\n\r\n").into_bytes()] {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
                let _ = s.write_all(&request);
                if whole {
                    let _ = s.shutdown(std::net::Shutdown::Write);
                }
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
                let text = String::from_utf8_lossy(&out);
                proptest::prop_assert!(out.is_empty() || text.starts_with("HTTP/1.1 "), "{}", text);
            }
            proptest::prop_assert!(get(addr, "/healthz").starts_with("HTTP/1.1 200"));
        }
    }
}
