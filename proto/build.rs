//! Compiles `proto/*.proto` with protox, a pure-Rust protobuf compiler, so
//! building shoal never needs a `protoc` binary on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/common.proto", "proto/gcs.proto", "proto/raylet.proto", "proto/worker.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // Object payloads are `bytes::Bytes` so chunks and values move between
        // buffers without copies.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
