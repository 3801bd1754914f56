//! Image → local binary mapping.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// The workspace binaries that stand in for Squall's images, by image
/// repository name (the binary has the same name).
pub const WORKSPACE_IMAGES: &[&str] = &[
    "squall-examples",
    "squall-supervisor",
    "squall-operator",
    "testenv-pod",
];

/// Maps an image's repository name to a local binary.
///
/// A reference like `ghcr.io/squall-dev/squall-examples:0.1@sha256:...` is
/// looked up first by its full repository (`ghcr.io/squall-dev/squall-examples`),
/// then by its last path segment (`squall-examples`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageMap {
    map: BTreeMap<String, PathBuf>,
}

impl ImageMap {
    /// An empty mapping.
    pub fn new() -> ImageMap {
        ImageMap::default()
    }

    /// Adds (or replaces) a mapping.
    pub fn insert(&mut self, image: impl Into<String>, binary: impl Into<PathBuf>) -> &mut Self {
        self.map.insert(image.into(), binary.into());
        self
    }

    /// Builder-style [`ImageMap::insert`].
    pub fn with(mut self, image: impl Into<String>, binary: impl Into<PathBuf>) -> ImageMap {
        self.insert(image, binary);
        self
    }

    /// All entries.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v.as_path()))
    }

    /// The repository part of an image reference: no tag, no digest.
    pub fn repository(image: &str) -> &str {
        let no_digest = image.split('@').next().unwrap_or(image);
        // A ':' after the last '/' is a tag (a ':' before it is a registry port).
        match no_digest.rfind(':') {
            Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
            _ => no_digest,
        }
    }

    /// The binary an image runs, if mapped.
    pub fn resolve(&self, image: &str) -> Option<&Path> {
        let repo = Self::repository(image);
        if let Some(p) = self.map.get(repo) {
            return Some(p);
        }
        let last = repo.rsplit('/').next().unwrap_or(repo);
        self.map.get(last).map(PathBuf::as_path)
    }

    /// The workspace's target directory: `$CARGO_TARGET_DIR`, else `<workspace>/target`.
    pub fn target_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
        // tests/testenv → the workspace root.
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        manifest
            .parent()
            .and_then(Path::parent)
            .unwrap_or(manifest)
            .join("target")
    }

    /// [`WORKSPACE_IMAGES`] → `<target>/<profile>/<name>`, where profile is
    /// `$SQUALL_IMAGE_PROFILE` if set, else `debug` if that binary exists,
    /// else `release` if that one exists, else `debug`.
    pub fn workspace_defaults() -> ImageMap {
        let target = Self::target_dir();
        let forced = std::env::var("SQUALL_IMAGE_PROFILE")
            .ok()
            .filter(|p| !p.is_empty());
        let mut m = ImageMap::new();
        for name in WORKSPACE_IMAGES {
            let path = match &forced {
                Some(p) => target.join(p).join(name),
                None => {
                    let debug = target.join("debug").join(name);
                    let release = target.join("release").join(name);
                    if !debug.exists() && release.exists() {
                        release
                    } else {
                        debug
                    }
                }
            };
            m.insert(*name, path);
        }
        m
    }

    /// Parses `image = /path/to/binary` lines (`#` comments, blank lines ok).
    /// Relative paths are taken relative to `base`.
    pub fn parse(text: &str, base: &Path) -> Result<ImageMap> {
        let mut m = ImageMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| {
                Error::Invalid(format!(
                    "image map line {}: expected `image = path`, got `{line}`",
                    i + 1
                ))
            })?;
            let (k, v) = (k.trim(), v.trim().trim_matches('"'));
            if k.is_empty() || v.is_empty() {
                return Err(Error::Invalid(format!(
                    "image map line {}: empty image or path",
                    i + 1
                )));
            }
            m.insert(k, base.join(v));
        }
        Ok(m)
    }

    /// Reads a mapping file (see [`ImageMap::parse`]).
    pub fn from_file(path: &Path) -> Result<ImageMap> {
        let text = std::fs::read_to_string(path).ctx(|| format!("read {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base)
    }

    /// [`ImageMap::workspace_defaults`], overridden by the file named in
    /// `$SQUALL_IMAGE_MAP` (if set), overridden by `$SQUALL_IMAGES`
    /// (`image=path,image=path`, if set).
    pub fn from_env() -> Result<ImageMap> {
        let mut m = Self::workspace_defaults();
        if let Some(f) = std::env::var_os("SQUALL_IMAGE_MAP").filter(|f| !f.is_empty()) {
            m.map.extend(Self::from_file(Path::new(&f))?.map);
        }
        if let Ok(inline) = std::env::var("SQUALL_IMAGES") {
            let cwd = std::env::current_dir().unwrap_or_default();
            m.map
                .extend(Self::parse(&inline.replace(',', "\n"), &cwd)?.map);
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_strips_tag_and_digest_not_port() {
        assert_eq!(ImageMap::repository("squall-examples"), "squall-examples");
        assert_eq!(
            ImageMap::repository("squall-examples:0.1"),
            "squall-examples"
        );
        assert_eq!(
            ImageMap::repository("localhost:5000/x/squall-operator:v1@sha256:abc"),
            "localhost:5000/x/squall-operator"
        );
        assert_eq!(
            ImageMap::repository("localhost:5000/squall-operator"),
            "localhost:5000/squall-operator"
        );
    }

    #[test]
    fn resolve_full_then_last_segment() {
        let m = ImageMap::new()
            .with("squall-examples", "/a")
            .with("ghcr.io/x/squall-examples", "/b");
        assert_eq!(
            m.resolve("ghcr.io/x/squall-examples:1"),
            Some(Path::new("/b"))
        );
        assert_eq!(
            m.resolve("docker.io/y/squall-examples:1"),
            Some(Path::new("/a"))
        );
        assert_eq!(m.resolve("other"), None);
    }

    #[test]
    fn parse_file_format() {
        let m = ImageMap::parse(
            "# comment\nsquall-operator = /bin/op\n\nfoo=rel/foo # trailing\n",
            Path::new("/base"),
        )
        .unwrap();
        assert_eq!(m.resolve("squall-operator"), Some(Path::new("/bin/op")));
        assert_eq!(m.resolve("foo:1"), Some(Path::new("/base/rel/foo")));
        assert!(ImageMap::parse("nonsense", Path::new("/")).is_err());
    }
}
