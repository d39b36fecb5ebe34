//! Compiles `proto/*.proto` with protox, a pure-Rust protobuf compiler, so
//! building shoal never needs a `protoc` binary on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/common.proto", "proto/gcs.proto", "proto/raylet.proto", "proto/worker.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    write_method_table(&fds)?;
    tonic_prost_build::configure()
        // Object payloads are `bytes::Bytes` so chunks and values move between
        // buffers without copies.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}

/// Writes `methods.rs`: every gRPC method of every service, so servers and
/// tests can check that each one is covered (authentication, limits).
fn write_method_table(fds: &prost_types::FileDescriptorSet) -> Result<(), Box<dyn std::error::Error>> {
    let mut out = String::from("/// Every gRPC method shoal serves.\npub const METHODS: &[Method] = &[\n");
    for file in &fds.file {
        let package = file.package();
        for service in &file.service {
            for m in &service.method {
                out.push_str(&format!(
                    "    Method {{ path: \"/{package}.{}/{}\", client_streaming: {}, server_streaming: {} }},\n",
                    service.name(),
                    m.name(),
                    m.client_streaming(),
                    m.server_streaming()
                ));
            }
        }
    }
    out.push_str("];\n");
    std::fs::write(std::path::Path::new(&std::env::var("OUT_DIR")?).join("methods.rs"), out)?;
    Ok(())
}
