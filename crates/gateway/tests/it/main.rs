//! Integration tests of the gateway: Gateway API conformance cases as data files
//! (`tests/conformance/*.yaml`), served by the real proxy to real echo backends over TCP.

mod compression;
mod conformance;
mod differential;
mod drain;
mod ext_auth;
mod grpc;
mod h1;
mod harness;
mod http2;
mod http3;
mod jwt;
mod keepalive;
mod lua;
mod oidc;
mod policies;
mod reload;
mod resolution;
mod routing;
mod security;
mod tls;
mod udp;
mod upstream;
