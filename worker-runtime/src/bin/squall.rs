//! `squall`: the generic topology binary. It runs manifests made only of shell
//! components (Storm multilang subprocesses: Python, JavaScript, Ruby, ...) and the
//! components built into every binary, with no Rust to write and no image to build:
//! the `squall` image carries it with Python 3, Node.js and Storm's multilang
//! libraries.
//!
//! The same commands as every topology binary: `squall local topology.yaml`,
//! `squall validate`, `squall worker` (in a worker pod), `squall supervisor`.

use std::process::ExitCode;

use squall_runtime::Registry;

fn main() -> ExitCode {
    squall_runtime::cli::main(Registry::new())
}
