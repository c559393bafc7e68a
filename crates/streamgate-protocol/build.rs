//! Generates the wire types from `proto/pubsub.proto` with protox (pure Rust: no `protoc` needed).
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let proto = proto_dir.join("pubsub.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let descriptors = protox::compile([&proto], [&proto_dir])?;
    prost_build::Config::new()
        // Record keys and values become `Bytes`: the gateway hands broker buffers to the encoder
        // without copying them.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
