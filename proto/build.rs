//! Compiles `proto/*.proto` with protox (pure Rust; no system `protoc`) and generates the
//! tonic clients and servers from the resulting descriptor set.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/raft.proto", "proto/infer.proto", "proto/meta.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
