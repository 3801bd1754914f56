//! The web UI (`coord/src/ui.html`) in headless Chromium, against the
//! `api/topologies` fixture (`coord/src/ui-fixture.json`), served from a tiny
//! loopback HTTP server: the page renders the list, the graph, the tables and
//! the last error, escapes text, and reports a failed API as `data-state="error"`.
//!
//! `SQUALL_UI_SCREENSHOT=$PWD/docs/images/ui-topology.png cargo test -p squall-testenv
//! --test browser` also writes the fixture's topology page there (1280x900).

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;

use serde_json::Value;
use squall_testenv::TempDir;
use squall_testenv::browser::{body_state, dump_dom, row, screenshot, tagged};

/// Virtual time for the page's first fetch and render (the poll repeats every 2 s).
const BUDGET_MS: u64 = 3000;

fn coord_src(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../coord/src")
        .join(name)
}

fn fixture() -> Value {
    serde_json::from_str(&std::fs::read_to_string(coord_src("ui-fixture.json")).unwrap()).unwrap()
}

/// Serves the page at `/` and `api` (status, body) at `/api/topologies` on
/// 127.0.0.1; returns the base URL. The thread lives as long as the test process.
fn serve(api: (u16, String)) -> String {
    let page = std::fs::read_to_string(coord_src("ui.html")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = respond(stream, &page, &api);
        }
    });
    base
}

fn respond(mut s: TcpStream, page: &str, api: &(u16, String)) -> std::io::Result<()> {
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let req = String::from_utf8_lossy(&req);
    let path = req.split_whitespace().nth(1).unwrap_or("");
    let path = path.split(['?', '#']).next().unwrap_or("");
    let (status, ctype, body) = match path {
        "/" => (200, "text/html; charset=utf-8", page),
        "/api/topologies" => (api.0, "application/json", api.1.as_str()),
        _ => (404, "text/plain", "not found"),
    };
    write!(
        s,
        "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// HTML-escaped, as Chromium serializes text nodes.
fn escaped(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[test]
fn topology_page_renders_graph_tables_and_last_error() {
    let fx = fixture();
    let topo = &fx["topologies"][0];
    let base = serve((200, fx.to_string()));
    let dom = dump_dom(&format!("{base}#/default/word-count"), BUDGET_MS).unwrap();

    assert_eq!(body_state(&dom), "ready", "page not ready:\n{dom}");
    assert_eq!(tagged(&dom, "graph").len(), 1, "one <svg> graph");

    let nodes = tagged(&dom, "node");
    let ids: Vec<&str> = nodes.iter().map(|n| n["data-component"].as_str()).collect();
    assert_eq!(ids, ["sentences", "split", "count"]);
    for (n, c) in nodes.iter().zip(topo["components"].as_array().unwrap()) {
        let shown: f64 = n["data-capacity"].parse().unwrap();
        assert_eq!(shown, c["capacity"].as_f64().unwrap(), "{n:?}");
    }

    let edges: Vec<(String, String, f64)> = tagged(&dom, "edge")
        .iter()
        .map(|e| {
            (
                e["data-from"].clone(),
                e["data-to"].clone(),
                e["data-rate"].parse().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, String, f64)> = topo["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap().to_string(),
                e["to"].as_str().unwrap().to_string(),
                e["tuplesPerSecond"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(edges, want);
    assert!(edges.iter().all(|e| e.2 > 0.0), "{edges:?}");
    assert!(dom.contains(">fields(word)<"), "fields grouping label");
    assert!(dom.contains(">shuffle<"), "shuffle grouping label");

    assert_eq!(tagged(&dom, "components").len(), 1);
    assert_eq!(tagged(&dom, "component-row").len(), 3);
    let slots: Vec<String> = tagged(&dom, "worker-row")
        .iter()
        .map(|w| w["data-slot"].clone())
        .collect();
    assert_eq!(slots, ["0", "1"]);
    assert!(dom.contains("word-count-w1"), "worker pod name");

    // The last error sits in split's row, as text: the fixture's `<dropped>` must come out escaped.
    let message = topo["components"][1]["lastError"]["message"]
        .as_str()
        .unwrap();
    assert!(
        message.contains('<'),
        "the fixture should exercise escaping"
    );
    let split = row(&dom, "component-row", "split").expect("split row");
    assert!(split.contains("data-testid=\"last-error\""), "{split}");
    assert!(
        split.contains(&escaped(message)),
        "last error missing:\n{split}"
    );
    assert!(split.contains("task 4"), "{split}");
    assert!(!dom.contains("<dropped>"), "data was parsed as markup");
    let count = row(&dom, "component-row", "count").expect("count row");
    assert!(!count.contains("sentence too long"), "{count}");

    assert_eq!(tagged(&dom, "events").len(), 1);
    assert!(dom.contains(">WorkerRestarted<") && dom.contains(">PlanApplied<"));
    assert!(dom.contains("kubectl delete topology word-count -n default"));
}

#[test]
fn list_view_shows_one_row_per_topology() {
    let base = serve((200, fixture().to_string()));
    for url in [format!("{base}#/"), base.clone()] {
        let dom = dump_dom(&url, BUDGET_MS).unwrap();
        assert_eq!(body_state(&dom), "ready", "{url}:\n{dom}");
        assert_eq!(tagged(&dom, "topology-list").len(), 1, "{url}");
        assert_eq!(tagged(&dom, "topology-row").len(), 1, "{url}");
        assert!(dom.contains("href=\"#/default/word-count\""), "{url}");
        assert!(
            tagged(&dom, "graph").is_empty(),
            "{url}: list view has no graph"
        );
    }
}

#[test]
fn a_failing_api_or_unknown_topology_is_an_error_state() {
    let broken = serve((500, "oops".into()));
    let dom = dump_dom(&format!("{broken}#/default/word-count"), BUDGET_MS).unwrap();
    assert_eq!(body_state(&dom), "error", "{dom}");
    assert!(dom.contains("connection lost"), "{dom}");
    assert!(tagged(&dom, "node").is_empty());

    let ok = serve((200, fixture().to_string()));
    let dom = dump_dom(&format!("{ok}#/default/no-such"), BUDGET_MS).unwrap();
    assert_eq!(body_state(&dom), "error", "{dom}");
    assert!(dom.contains("not found"), "{dom}");
}

#[test]
fn topology_page_screenshot() {
    let base = serve((200, fixture().to_string()));
    let url = format!("{base}#/default/word-count");
    let dir = TempDir::new("ui-screenshot").unwrap();
    let png = dir.path().join("topology.png");
    screenshot(&url, &png, 1280, 900, BUDGET_MS).unwrap();
    assert!(
        std::fs::metadata(&png).unwrap().len() > 10_000,
        "suspiciously small PNG"
    );
    if let Some(out) = std::env::var_os("SQUALL_UI_SCREENSHOT") {
        screenshot(&url, PathBuf::from(out).as_path(), 1280, 900, BUDGET_MS).unwrap();
    }
}
