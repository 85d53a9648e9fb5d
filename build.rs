//! Compiles the public contract in `proto/` with protox (pure Rust: no system `protoc`), generates
//! the tonic/prost code and writes the file descriptor set that server reflection serves.
use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/dsr/v1/dsr.proto",
    "proto/dsr/v1/audit.proto",
    "proto/dsr/v1/holds.proto",
    "proto/dsr/adapter/v1/adapter.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    // The migrations are embedded by `sqlx::migrate!`: a new file must rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("dsr_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Archive chunks pass through as `Bytes`, without a copy.
        .bytes(".dsr.v1.ExportChunk.data")
        .bytes(".dsr.adapter.v1.ExportItem.chunk")
        .compile_fds(fds)?;
    Ok(())
}
