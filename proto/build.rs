//! Compiles the wire contract with `protox` (pure Rust) so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/wva/v1/telemetry.proto",
        "proto/wva/v1/diagnostics.proto",
        "proto/keda/externalscaler.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
