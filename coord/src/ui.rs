//! The web UI: one self-contained page (`ui.html`: inline CSS and JS, no
//! external assets, so it works with no internet) and the JSON it polls,
//! `api/topologies` (a [`UiSnapshot`]). The operator serves it with every
//! topology it reconciles, local mode with the one it runs; both build the
//! snapshot from `squall_api::view`.

use std::net::SocketAddr;

use squall_api::view::UiSnapshot;

use crate::admin::{Answer, serve_with};

/// The page.
pub const PAGE: &str = include_str!("ui.html");

/// Serve the page at `/` and the snapshot at `/api/topologies` on `addr`,
/// from a background thread, for the life of the process. Returns the bound
/// address.
///
/// # Errors
///
/// When `addr` cannot be bound.
pub fn serve(
    addr: SocketAddr,
    snapshot: impl Fn() -> UiSnapshot + Send + Sync + 'static,
) -> std::io::Result<SocketAddr> {
    serve_with(addr, "squall-ui", move |path| route(path, &snapshot))
}

fn route(path: &str, snapshot: &impl Fn() -> UiSnapshot) -> Answer {
    match path {
        "/" | "/index.html" => ("200 OK", "text/html; charset=utf-8", PAGE.to_string()),
        "/api/topologies" => match serde_json::to_string(&snapshot()) {
            Ok(json) => ("200 OK", "application/json", json),
            Err(e) => (
                "500 Internal Server Error",
                "text/plain",
                format!("cannot encode the snapshot: {e}\n"),
            ),
        },
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn serves_the_page_and_the_snapshot_and_the_fixture_fits_the_types() {
        // The fixture the page's browser test renders must be what the server sends.
        let fixture: UiSnapshot = serde_json::from_str(include_str!("ui-fixture.json")).unwrap();
        assert_eq!(fixture.topologies[0].components.len(), 3);
        let (status, ct, body) = route("/api/topologies", &|| fixture.clone());
        assert_eq!((status, ct), ("200 OK", "application/json"));
        let back: UiSnapshot = serde_json::from_str(&body).unwrap();
        assert_eq!(back, fixture);
        let (status, ct, body) = route("/", &UiSnapshot::default);
        assert!(status.starts_with("200") && ct.starts_with("text/html"));
        assert!(body.contains("api/topologies") && !body.contains("://cdn"));
        assert!(route("/nope", &UiSnapshot::default).0.starts_with("404"));
    }
}
