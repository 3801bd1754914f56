//! The examples' topology binary, for the multi-process tests.

fn main() -> std::process::ExitCode {
    squall_runtime::cli::main(squall_examples::registry())
}
