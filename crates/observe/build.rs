//! Compiles the observer protos with protox (no protoc on the build machines) and generates
//! the prost messages and the tonic client and server. The descriptor set is kept in OUT_DIR
//! too: the JSON output of `trellis observe` reads field names from it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/observer/observer.proto"];
    for p in [
        "proto/flow/flow.proto",
        "proto/relay/relay.proto",
        protos[0],
    ] {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
