//! Compiles `proto/` into Rust with protox, a pure-Rust protobuf compiler, so that
//! `cargo build` needs no system `protoc`. The descriptor set it writes also feeds gRPC
//! server reflection.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/barazo/session/v1/session.proto";
    println!("cargo:rerun-if-changed=proto");

    // `compile` includes the imports (google/protobuf/timestamp.proto), which reflection
    // clients need to resolve the Session message.
    let descriptors = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("session_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
