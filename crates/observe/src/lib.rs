//! Flows: what every trellis component saw, kept in a bounded buffer, filtered and served
//! over Hubble's Observer gRPC API.
//!
//! - [`proto`]: the prost messages and tonic service generated from `proto/` (a subset of
//!   Hubble's `flow`, `observer` and `relay` packages, same names and numbers).
//! - [`hub`]: the flow buffer. Producers hold a [`Flows`] handle and [`Flows::push`] never
//!   waits: a full queue is counted as lost, never silently. [`Observer`] owns the buffer.
//!   A busy producer records bytes with a [`Recorder`] instead, built into flows only when
//!   read by its [`RecordKind`].
//! - [`wire`]: the byte layout helpers of such records.
//! - [`filter`]: Hubble's `FlowFilter` semantics (whitelist / blacklist).
//! - [`format`]: the one-line summary, `compact`, `table` and JSON output.
//! - [`metrics`]: Hubble's metric names (`hubble_flows_processed_total`, ...).
//! - [`server`]: the tonic service (GetFlows, GetNodes, ServerStatus) and [`serve`].
//! - [`query`]: the filter flags of `hubble observe` and the whitelist they make; the CLI
//!   takes them as flags, the web UI as query-string keys.
//! - [`map`]: the service map (workloads, Services, reserved identities; edges counted per
//!   verdict) aggregated from flows.
//! - [`ui`]: the web UI (one embedded page) and its JSON / Server-Sent-Events API.
//! - [`endpoints`]: pods by IP from the snapshot, so every producer names endpoints alike.
//! - [`packet`]: L3/L4 flows from decoded datapath events ([`packet::PacketEvent`]).
//!
//! Not here: how a component's events become flows. Engines never depend on each other, so
//! the gateway and DNS report requests and queries in their own types, and the binary turns
//! them into [`proto::flow::Flow`]s. A datapath ring buffer reader decodes each record into a
//! [`packet::PacketEvent`], calls [`Flows::push`] with [`packet::flow`] of it, and reports what
//! the kernel lost with [`Flows::lost`] (`PERF_EVENT_RING_BUFFER`).

pub mod endpoints;
pub mod filter;
pub mod format;
pub mod hub;
pub mod map;
pub mod metrics;
pub mod packet;
pub mod query;
pub mod server;
pub mod time;
pub mod ui;
pub mod wire;

pub use filter::{FilterError, FilterSet};
pub use hub::{Config, Flows, Observer, RecordKind, Recorder};
pub use server::{serve, spawn};

/// Generated code: prost messages, the tonic client and server.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic)]
    pub mod flow {
        tonic::include_proto!("flow");
    }
    pub mod relay {
        tonic::include_proto!("relay");
    }
    pub mod observer {
        tonic::include_proto!("observer");
    }

    /// The compiled descriptors of the three packages (for protobuf JSON).
    pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
}

pub use proto::flow::Flow;
