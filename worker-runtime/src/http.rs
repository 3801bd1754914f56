//! A minimal HTTP/1.1 endpoint for `/metrics` and `/healthz`.
//!
//! Scrapes are rare and tiny, so a blocking listener on one thread is enough and
//! keeps an HTTP stack out of the engine.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// An answer: status code, content type, body.
pub type Reply = (u16, &'static str, String);

/// Produces the reply for a path, or `None` for 404.
pub type Handler = Arc<dyn Fn(&str) -> Option<Reply> + Send + Sync>;

/// Serve `handler` on `addr` from a background thread. Returns the bound address.
pub fn serve(addr: SocketAddr, handler: Handler) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("squall-http".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(stream, &handler) {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            }
        })?;
    Ok(local)
}

fn answer(mut stream: TcpStream, handler: &Handler) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the headers; the body of a GET is empty.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    let (code, content_type, body) =
        handler(path).unwrap_or((404, "text/plain", "not found\n".to_string()));
    let status = match code {
        200 => "200 OK",
        404 => "404 Not Found",
        503 => "503 Service Unavailable",
        _ => "500 Internal Server Error",
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// The Prometheus text format's content type.
pub const PROMETHEUS: &str = "text/plain; version=0.0.4";
