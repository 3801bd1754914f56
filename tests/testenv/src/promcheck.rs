//! `promtool check metrics`, as a function: Prometheus' own text parser and
//! promlint, run by the Go checker that provision.sh builds from
//! `tests/testenv/promcheck`.

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::error::{Error, IoContext as _, Result};

/// Check Prometheus text exposition (what a `/metrics` endpoint serves) as
/// `promtool check metrics` does: it must parse, and promlint must find no
/// problem (`# HELP` on every family, counters ending `_total`, base units…).
/// `Err(MetricsRejected)` carries promcheck's report.
pub fn promcheck(text: &str) -> Result<()> {
    let bin = crate::promcheck_binary()?;
    let mut child = Command::new(&bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ctx(|| format!("cannot run {}", bin.display()))?;
    // promcheck reads all of stdin before it writes, so writing first cannot block on a full pipe.
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| Error::Invalid("promcheck has no stdin".into()))?;
    stdin
        .write_all(text.as_bytes())
        .ctx(|| "cannot write to promcheck".to_string())?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .ctx(|| "promcheck did not finish".to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::MetricsRejected(format!(
            "{} ({}){}",
            String::from_utf8_lossy(&out.stderr).trim_end(),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim_end()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checker is known to work: clean text passes, and each kind of
    /// problem `promtool check metrics` reports fails it.
    #[test]
    fn promcheck_passes_clean_text_and_rejects_broken_text() {
        promcheck(
            "# HELP ok_total A counter.\n# TYPE ok_total counter\nok_total{a=\"b\"} 1\n\
             # HELP ok_seconds A histogram.\n# TYPE ok_seconds histogram\n\
             ok_seconds_bucket{le=\"0.1\"} 1\nok_seconds_bucket{le=\"+Inf\"} 2\n\
             ok_seconds_sum 0.3\nok_seconds_count 2\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for (broken, says) in [
            // A parse error.
            ("ok_total{a=\"b\" 1\n", "pars"),
            // No HELP.
            ("# TYPE ok_total counter\nok_total 1\n", "no help text"),
            // A counter without _total.
            ("# HELP ok A counter.\n# TYPE ok counter\nok 1\n", "_total"),
            // Not a base unit.
            (
                "# HELP ok_milliseconds A gauge.\n# TYPE ok_milliseconds gauge\nok_milliseconds 1\n",
                "base unit",
            ),
        ] {
            match promcheck(broken) {
                Err(Error::MetricsRejected(report)) => {
                    assert!(report.contains(says), "{broken:?}: {report}")
                }
                other => panic!("{broken:?} passed promcheck: {other:?}"),
            }
        }
    }
}
