//! Generates the gRPC client and server of the stream from a Rust description
//! (no `.proto`, no `protoc`): one bidirectional method whose messages are the
//! serde types of this crate, carried by [`crate::codec::JsonCodec`].

fn main() {
    let connect = tonic_build::manual::Method::builder()
        .name("follow")
        .route_name("Follow")
        .input_type("crate::ClientMessage")
        .output_type("crate::ServerMessage")
        .codec_path("crate::codec::JsonCodec")
        .client_streaming()
        .server_streaming()
        .build();
    let service = tonic_build::manual::Service::builder()
        .name("Distributor")
        .package("palisade.stream.v1")
        .comment("Serves each node's compiled rule set to that node's enforcer.")
        .method(connect)
        .build();
    tonic_build::manual::Builder::new().compile(&[service]);
    println!("cargo:rerun-if-changed=build.rs");
}
