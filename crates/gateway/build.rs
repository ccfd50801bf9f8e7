//! Compiles the part of Envoy's ext_authz gRPC API the gateway speaks (`proto/ext_authz.proto`)
//! with protox (no protoc on the build machines) into prost messages and a tonic client.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/ext_authz.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
