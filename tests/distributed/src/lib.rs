//! Multi-process tests of Squall live in `tests/`; this crate has no library code.
