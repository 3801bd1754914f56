//! Generates the gRPC code for `proto/squall.proto` with a vendored protoc,
//! so building needs no protoc on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/squall.proto");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .bytes(".squall.v1.Batch.payload")
        .compile_with_config(config, &["proto/squall.proto"], &["proto"])?;
    Ok(())
}
