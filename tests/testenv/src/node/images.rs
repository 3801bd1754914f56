//! The images a node runs: where `make images` leaves their archives, and
//! importing them into the node's containerd, with the extra tag that lets
//! tests roll pods to a "new" image.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, IoContext, Result};

/// The default directory of image archives (`make images`).
pub fn default_images_dir() -> PathBuf {
    std::env::var_os("SQUALL_IMAGES_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/images")
                .components()
                .collect()
        })
}

/// The examples image, and the extra tag the node gives it (see [`import_images`]).
pub const ROLL_FROM: &str = "docker.io/library/squall-examples:0.1.0";
/// `squall-examples:0.1.1`: the same image under the next tag.
pub const ROLL_TO: &str = "docker.io/library/squall-examples:0.1.1";

/// Imports every `*.tar` in `dir` into the node's containerd (`k8s.io`
/// namespace, where the CRI looks) and returns the image names it now has.
pub(super) fn import_images(sock: &Path, dir: &Path) -> Result<Vec<String>> {
    let mut archives: Vec<PathBuf> = std::fs::read_dir(dir)
        .ctx(|| {
            format!(
                "read image archives in {} (run `make images`)",
                dir.display()
            )
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    archives.sort();
    if archives.is_empty() {
        return Err(Error::Invalid(format!(
            "no image archives in {} (run `make images`)",
            dir.display()
        )));
    }
    for a in &archives {
        let out = Command::new("ctr")
            .arg("-a")
            .arg(sock)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(a)
            .output()
            .ctx(|| "run ctr".into())?;
        if !out.status.success() {
            return Err(Error::Invalid(format!(
                "ctr images import {}: {}",
                a.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    // A second tag of the examples image, so that tests can roll worker pods
    // to a "new" image as a user would after pushing one.
    let _ = Command::new("ctr")
        .arg("-a")
        .arg(sock)
        .args(["-n", "k8s.io", "images", "tag", "--force"])
        .args([ROLL_FROM, ROLL_TO])
        .output();
    let out = Command::new("ctr")
        .arg("-a")
        .arg(sock)
        .args(["-n", "k8s.io", "images", "ls", "-q"])
        .output()
        .ctx(|| "run ctr".into())?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("sha256:"))
        .map(str::to_owned)
        .collect())
}
