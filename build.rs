//! Compiles `proto/` into Rust with protox, a pure-Rust protobuf compiler, so that
//! `cargo build` needs no system `protoc`. The descriptor sets it writes feed gRPC server
//! reflection: the session service's, and Envoy's ext_authz service's (whose Rust types
//! come from the `envoy-types` crate; only its descriptors are built here, from the protos
//! vendored in `third_party/envoy-api`).

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/barazo/session/v1/session.proto";
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=third_party/envoy-api");

    // `compile` includes the imports (google/protobuf/timestamp.proto), which reflection
    // clients need to resolve the Session message.
    let descriptors = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("session_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;

    // Descriptors only: envoy-types already holds the generated code.
    let envoy = protox::compile(
        ["envoy/service/auth/v3/external_auth.proto"],
        ["third_party/envoy-api"],
    )?;
    std::fs::write(
        out_dir.join("ext_authz_descriptor.bin"),
        envoy.encode_to_vec(),
    )?;
    Ok(())
}
