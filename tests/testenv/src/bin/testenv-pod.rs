//! A tiny process for node-agent tests: serves HTTP on `$POD_IP:$PORT`
//! (defaults 127.0.0.1:8080).
//!
//! - `GET /healthz` → 200 `ok` (readiness/liveness probes)
//! - `GET /env/<NAME>` → the value of env var NAME (404 if unset)
//! - `GET /file?<path>` → a file's contents (to check volumes)
//! - any other path → 200 with the pod name
//!
//! `TESTENV_EXIT_AFTER_MS` + `TESTENV_EXIT_CODE`: exit with that code after
//! that long instead of serving forever.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn main() {
    let ip = std::env::var("POD_IP").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    if let Ok(ms) = std::env::var("TESTENV_EXIT_AFTER_MS") {
        let code: i32 = std::env::var("TESTENV_EXIT_CODE")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let ms: u64 = ms.parse().unwrap_or(0);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            println!("exiting with {code}");
            std::process::exit(code);
        });
    }
    let listener = match TcpListener::bind(format!("{ip}:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bind {ip}:{port}: {e}");
            std::process::exit(2);
        }
    };
    println!("testenv-pod listening on {ip}:{port}");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || serve(stream));
    }
}

fn serve(mut stream: TcpStream) {
    let mut line = String::new();
    {
        let mut r = BufReader::new(&stream);
        if r.read_line(&mut line).is_err() {
            return;
        }
        // Drain headers.
        let mut h = String::new();
        while r.read_line(&mut h).map(|n| n > 2).unwrap_or(false) {
            h.clear();
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (code, body) = if path == "/healthz" {
        (200, "ok".to_string())
    } else if let Some(name) = path.strip_prefix("/env/") {
        match std::env::var(name) {
            Ok(v) => (200, v),
            Err(_) => (404, format!("{name} unset")),
        }
    } else if let Some(file) = path.strip_prefix("/file?") {
        match std::fs::read_to_string(file) {
            Ok(v) => (200, v),
            Err(e) => (404, e.to_string()),
        }
    } else {
        (200, std::env::var("POD_NAME").unwrap_or_default())
    };
    let reason = if code == 200 { "OK" } else { "Not Found" };
    let _ = write!(
        stream,
        "HTTP/1.0 {code} {reason}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
        body.len()
    );
}
