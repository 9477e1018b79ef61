//! Generates the herald.v1 gRPC code and the descriptor set used by server reflection.
//!
//! protox is a pure-Rust protobuf compiler, so no system `protoc` is needed.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["herald/v1/herald.proto"], ["proto"])?;
    // compile_fds does not honour file_descriptor_set_path: write the descriptor set ourselves.
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("herald_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".herald.v1.AudioChunk.data")
        .compile_fds(fds)?;
    // compile_fds cannot know the source files: declare them ourselves.
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
