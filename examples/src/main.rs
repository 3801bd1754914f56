//! The examples' topology binary: `squall-examples local examples/word-count/topology.yaml`.

fn main() -> std::process::ExitCode {
    squall_runtime::cli::main(squall_examples::registry())
}
