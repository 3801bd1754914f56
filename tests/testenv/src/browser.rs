//! Headless Chromium for UI tests: dump a page's DOM after its scripts ran, or
//! take a screenshot. Debian's `chromium` package (`/usr/bin/chromium`), put
//! there by `tests/testenv/provision.sh`.
//!
//! Every run gets a fresh profile in a [`TempDir`] (removed afterwards), the
//! flags that keep Chromium off this machine's closed network, and
//! `--virtual-time-budget` so the page's timers and fetches run before the
//! dump. Chromium is spawned like every other child here (own process group,
//! dies with us) and killed, with its helpers, after [`TIMEOUT`].

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{Error, IoContext, Result};
use crate::process;
use crate::tempdir::TempDir;

/// Where Debian's chromium package installs the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A run that takes longer than this is killed and reported as an error.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Headless, no sandbox (we may run as root), and nothing that phones home:
/// without the background-networking flags Chromium's connections are refused
/// by the closed network, many at a time, and every start looks up Google's hosts.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
];

/// Loads `url`, lets its scripts run for `budget_ms` of virtual time, and
/// returns the serialized DOM (`--dump-dom`).
pub fn dump_dom(url: &str, budget_ms: u64) -> Result<String> {
    let out = run(Path::new(CHROMIUM), url, budget_ms, &["--dump-dom".into()])?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Loads `url` in a `width`x`height` window, lets its scripts run for
/// `budget_ms` of virtual time, and writes a PNG screenshot to `path`.
pub fn screenshot(url: &str, path: &Path, width: u32, height: u32, budget_ms: u64) -> Result<()> {
    let path = std::path::absolute(path).ctx(|| format!("absolute path of {}", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
    }
    if let Err(e) = std::fs::remove_file(&path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(Error::Io {
            context: format!("remove old screenshot {}", path.display()),
            source: e,
        });
    }
    let args = [
        format!("--screenshot={}", path.display()),
        format!("--window-size={width},{height}"),
    ];
    run(Path::new(CHROMIUM), url, budget_ms, &args)?;
    let png = std::fs::read(&path)
        .ctx(|| format!("chromium wrote no screenshot to {}", path.display()))?;
    if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Err(Error::Invalid(format!(
            "screenshot {} ({} bytes) is not a PNG",
            path.display(),
            png.len()
        )));
    }
    Ok(())
}

/// Runs `exe` with [`FLAGS`], a fresh profile and `extra` on `url`; returns its stdout.
fn run(exe: &Path, url: &str, budget_ms: u64, extra: &[String]) -> Result<Vec<u8>> {
    if !exe.is_file() {
        return Err(Error::ChromiumMissing {
            path: exe.to_path_buf(),
        });
    }
    let dir = TempDir::new("chromium")?;
    let (stdout, stderr) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut cmd = Command::new(exe);
    cmd.args(FLAGS)
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).ctx(|| format!("create {}", stdout.display()))?)
        .stderr(File::create(&stderr).ctx(|| format!("create {}", stderr.display()))?);
    let mut child = process::spawn(cmd).ctx(|| format!("start {}", exe.display()))?;
    let status = process::wait_timeout(&mut child, TIMEOUT);
    // Also reaps what is left of its process group (zygote, renderers).
    process::terminate(&mut child, Duration::from_secs(2));
    match status {
        None => Err(Error::NotReady {
            component: format!("chromium on {url}"),
            timeout: TIMEOUT,
            detail: format!(
                "killed; last stderr lines:\n{}",
                process::log_tail(&stderr, 20)
            ),
        }),
        Some(st) if !st.success() => Err(Error::Exited {
            component: format!("chromium on {url}"),
            status: st.to_string(),
            log_tail: process::log_tail(&stderr, 20),
        }),
        Some(_) => std::fs::read(&stdout).ctx(|| format!("read {}", stdout.display())),
    }
}

/// The attributes of every start tag carrying `data-testid="<id>"`, in
/// document order (the hooks the UI page puts on what tests look at).
pub fn tagged(dom: &str, id: &str) -> Vec<BTreeMap<String, String>> {
    start_tags(dom, id)
        .into_iter()
        .map(|(_, t)| attrs(t))
        .collect()
}

/// Each start tag carrying `data-testid="<id>"`, with where it starts.
fn start_tags<'a>(dom: &'a str, id: &str) -> Vec<(usize, &'a str)> {
    let needle = format!("data-testid=\"{id}\"");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = dom[from..].find(&needle).map(|i| i + from) {
        let (Some(start), Some(len)) = (dom[..i].rfind('<'), dom[i..].find('>')) else {
            break;
        };
        out.push((start, &dom[start..i + len]));
        from = i + len;
    }
    out
}

/// `name="value"` pairs of one start tag (Chromium always double-quotes them).
pub fn attrs(tag: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq]
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        let Some(len) = rest[eq + 2..].find('"') else {
            break;
        };
        out.insert(name, rest[eq + 2..eq + 2 + len].to_string());
        rest = &rest[eq + 3 + len..];
    }
    out
}

/// The `data-state` of `<body>`: `ready` once the page rendered its data.
pub fn body_state(dom: &str) -> String {
    dom.find("<body")
        .and_then(|i| Some(&dom[i..i + dom[i..].find('>')?]))
        .and_then(|tag| attrs(tag).remove("data-state"))
        .unwrap_or_default()
}

/// The markup of the first table row tagged `data-testid="<id>"` whose
/// `data-component` is `component`, up to its `</tr>`.
pub fn row<'a>(dom: &'a str, id: &str, component: &str) -> Option<&'a str> {
    start_tags(dom, id).into_iter().find_map(|(start, tag)| {
        (attrs(tag).get("data-component").map(String::as_str) == Some(component))
            .then(|| {
                dom[start..]
                    .find("</tr>")
                    .map(|end| &dom[start..start + end])
            })
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_chromium_is_a_clear_error() {
        let err = run(Path::new("/nonexistent/chromium"), "about:blank", 0, &[]).unwrap_err();
        assert!(matches!(err, Error::ChromiumMissing { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/chromium"), "{msg}");
        assert!(msg.contains("apt-get install chromium"), "{msg}");
    }
}
