//! Test environment (see issue 3).
