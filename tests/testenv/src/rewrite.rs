//! Rewriting an example manifest for a test, loudly.
//!
//! A test that runs a shipped manifest with a smaller limit or a shorter
//! timeout must not quietly run the original when the example changes shape:
//! `str::replace` of a pattern that is no longer there changes nothing, and
//! the test would then prove something else. [`Rewrite::rewrite`] fails
//! instead, naming the pattern.

/// `replace` that fails when there is nothing to replace.
pub trait Rewrite {
    /// Every occurrence of `from` replaced with `to`.
    ///
    /// # Panics
    ///
    /// When `from` does not occur: the text is not what the test expects.
    fn rewrite(&self, from: &str, to: &str) -> String;
}

impl Rewrite for str {
    #[track_caller]
    fn rewrite(&self, from: &str, to: &str) -> String {
        assert!(
            self.contains(from),
            "nothing to replace: {from:?} (to become {to:?}) is not in the text, \
             which changed shape:\n{self}"
        );
        self.replace(from, to)
    }
}

#[cfg(test)]
mod tests {
    use super::Rewrite;

    #[test]
    fn replaces_every_occurrence() {
        assert_eq!("a: 1\nb: 1\n".rewrite("1", "2"), "a: 2\nb: 2\n");
        let owned = String::from("workers: 1");
        assert_eq!(owned.rewrite("workers: 1", "workers: 3"), "workers: 3");
    }

    #[test]
    #[should_panic(expected = "nothing to replace: \"limit: 5\"")]
    fn a_missing_pattern_fails_loudly() {
        let _ = "limit: 6".rewrite("limit: 5", "limit: 1");
    }
}
