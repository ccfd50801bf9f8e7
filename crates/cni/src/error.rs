//! The plugin's error type and its mapping onto the CNI spec's error codes.
//!
//! Every error names the object it is about (the network, the container, the interface, the
//! file) so the line a runtime logs is enough to find the problem. `code()` is the number the
//! spec's error JSON carries; codes 1–11 and 50/51 are the spec's own, codes from 100 up are
//! trellis's (the spec reserves them for plugins).

use std::io;

/// Code for "the pool has no free address". Not 11 ("try again later"): a retry succeeds only
/// after some pod is deleted, which a runtime cannot know; the code says so precisely.
pub const CODE_POOL_EXHAUSTED: u32 = 100;
/// Code for a CHECK whose container does not match the `prevResult`.
pub const CODE_CHECK_FAILED: u32 = 101;
/// Code for a pod veth the eBPF datapath could not be attached to.
pub const CODE_DATAPATH: u32 = 102;
/// Code for an attachment (a NetworkAttachmentDefinition's plugins) that failed.
pub const CODE_ATTACHMENT: u32 = 103;

/// Why a command failed. `code()` gives the CNI error code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("incompatible CNI version {version:?}: this plugin speaks {}", crate::SUPPORTED_VERSIONS.join(", "))]
    IncompatibleVersion { version: String },
    #[error("{command} needs cniVersion {min} or later; the config says {version}")]
    CommandNeedsVersion {
        command: &'static str,
        version: String,
        min: &'static str,
    },
    #[error("unsupported field {field}: {why}")]
    UnsupportedField { field: String, why: String },
    #[error("container {container_id}: {why}")]
    UnknownContainer { container_id: String, why: String },
    #[error("environment variable {var}: {why}")]
    InvalidEnv { var: &'static str, why: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("decoding the network configuration: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("network configuration: {}", problems.join("; "))]
    InvalidConfig { problems: Vec<String> },
    #[error("{what}")]
    TryAgain { what: String },
    #[error("plugin cannot serve ADD: {why}")]
    NotAvailable { why: String },
    #[error("network {network}: no free address left in {cidr}")]
    PoolExhausted {
        network: String,
        cidr: ipnet::Ipv4Net,
    },
    /// For [`crate::attach_datapath`]: `datapath::attach_endpoint` failed on `iface`.
    #[error("attaching the datapath to {iface} (pins in {pin_dir}): {why}")]
    Datapath {
        iface: String,
        pin_dir: String,
        why: String,
    },
    /// An attachment's plugins failed; `network` is the NAD (`namespace/name`).
    #[error("attachment {network}: {why}")]
    Attachment { network: String, why: String },
    #[error("container {container_id} interface {ifname}: {}", problems.join("; "))]
    CheckFailed {
        container_id: String,
        ifname: String,
        problems: Vec<String>,
    },
}

impl Error {
    /// The CNI error code (spec "Error" section, plus trellis's ≥100).
    pub fn code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion { .. } | Error::CommandNeedsVersion { .. } => 1,
            Error::UnsupportedField { .. } => 2,
            Error::UnknownContainer { .. } => 3,
            Error::InvalidEnv { .. } => 4,
            Error::Io { .. } | Error::Netlink { .. } => 5,
            Error::Decode(_) => 6,
            Error::InvalidConfig { .. } => 7,
            Error::TryAgain { .. } => 11,
            Error::NotAvailable { .. } => 50,
            Error::PoolExhausted { .. } => CODE_POOL_EXHAUSTED,
            Error::CheckFailed { .. } => CODE_CHECK_FAILED,
            Error::Datapath { .. } => CODE_DATAPATH,
            Error::Attachment { .. } => CODE_ATTACHMENT,
        }
    }

    /// The short `msg` of the error JSON; the full text goes to `details`.
    pub fn msg(&self) -> &'static str {
        match self {
            Error::IncompatibleVersion { .. } | Error::CommandNeedsVersion { .. } => {
                "Incompatible CNI version"
            }
            Error::UnsupportedField { .. } => "Unsupported field in network configuration",
            Error::UnknownContainer { .. } => "Container unknown or does not exist",
            Error::InvalidEnv { .. } => "Invalid necessary environment variables",
            Error::Io { .. } | Error::Netlink { .. } => "I/O failure",
            Error::Decode(_) => "Failed to decode content",
            Error::InvalidConfig { .. } => "Invalid network config",
            Error::TryAgain { .. } => "Try again later",
            Error::NotAvailable { .. } => "Plugin not available",
            Error::PoolExhausted { .. } => "IP pool exhausted",
            Error::CheckFailed { .. } => "Container does not match prevResult",
            Error::Datapath { .. } => "Datapath attach failed",
            Error::Attachment { .. } => "Network attachment failed",
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn netlink(what: impl Into<String>, source: rtnetlink::Error) -> Error {
        Error::Netlink {
            what: what.into(),
            source,
        }
    }

    /// The errno behind a netlink error, if the kernel sent one.
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink {
                source: rtnetlink::Error::NetlinkError(msg),
                ..
            } => Some(msg.raw_code().abs()),
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// The spec's error JSON: `{"cniVersion","code","msg","details"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorReply {
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl ErrorReply {
    pub fn new(cni_version: &str, error: &Error) -> ErrorReply {
        ErrorReply {
            cni_version: cni_version.to_string(),
            code: error.code(),
            msg: error.msg().to_string(),
            details: error.to_string(),
        }
    }
}
