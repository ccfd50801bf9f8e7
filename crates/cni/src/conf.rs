//! What a runtime hands the plugin: the network configuration on stdin and the `CNI_*`
//! environment variables. Parsing and validation only; no I/O beyond reading the given values.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::result::CniResult;

/// The versions a config's `cniVersion` may name.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest version; also the `cniVersion` of replies that have no config to take one from.
pub const LATEST_VERSION: &str = "1.1.0";
/// MTU used when the config names none.
pub const MTU_DEFAULT: u32 = 1500;
/// Largest pool prefix with a usable address: /30 leaves one after network, router and
/// broadcast.
pub const POOL_PREFIX_LEN_MAX: u8 = 30;
/// Smallest pool prefix: a node's pod CIDR is a /24 or so; a /16 (65,533 addresses) bounds
/// the round-robin scan of one ADD.
pub const POOL_PREFIX_LEN_MIN: u8 = 16;

/// The network configuration (one plugin's entry, as the runtime passes it on stdin).
/// Unknown fields are accepted and ignored, as the spec asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The node's pod CIDR; the pool is every address in it but network, broadcast and the
    /// first one (the node's router).
    #[serde(rename = "podCIDR")]
    pub pod_cidr: IpNet,
    /// Where allocations live: `<stateDir>/ipam/<name>/`.
    pub state_dir: PathBuf,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub datapath: Option<Datapath>,
    /// Optional. trellis-cni is its own IPAM: a section with no `type` or `"type":"trellis"`
    /// is accepted (and otherwise ignored); any other type asks for delegation, which is
    /// refused (code 2) rather than silently not done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<serde_json::Value>,
    /// Set by the runtime for CHECK and DEL (and by chained plugins' callers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<serde_json::Value>,
    /// GC (spec 1.1): the attachments that are still in use.
    #[serde(
        rename = "cni.dev/valid-attachments",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Extra interfaces (Multus semantics): the pod's `k8s.v1.cni.cncf.io/networks`
    /// resolved against its NetworkAttachmentDefinitions (see [`crate::multus`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<crate::multus::Network>,
    /// The cluster's pod and service ranges: kept on the primary interface when an
    /// attachment takes the default route (`default-route`).
    #[serde(
        default,
        rename = "clusterCIDRs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cluster_cidrs: Vec<Ipv4Net>,
    /// On Kubernetes: the node agent's socket, which resolves a pod's attachments and writes
    /// its network-status (see [`crate::agent`]).
    #[serde(
        default,
        rename = "agentSocket",
        skip_serializing_if = "Option::is_none"
    )]
    pub agent_socket: Option<PathBuf>,
}

/// Where trellis's eBPF datapath keeps its pinned maps and programs for this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Datapath {
    pub pin_dir: PathBuf,
}

/// One `(containerID, ifname)` pair of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    /// Parses and validates stdin. Syntax errors are code 6; a `cniVersion` this plugin does
    /// not speak is code 1; every other problem is collected and reported at once (code 7).
    pub fn parse(bytes: &[u8]) -> Result<NetConf, Error> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(Error::Decode)?;
        let Some(object) = value.as_object() else {
            return Err(Error::InvalidConfig {
                problems: vec!["the configuration is not a JSON object".into()],
            });
        };
        match object.get("cniVersion").and_then(|v| v.as_str()) {
            None => {
                return Err(Error::InvalidConfig {
                    problems: vec!["cniVersion: missing or not a string".into()],
                });
            }
            Some(v) if !SUPPORTED_VERSIONS.contains(&v) => {
                return Err(Error::IncompatibleVersion { version: v.into() });
            }
            Some(_) => {}
        }
        let conf: NetConf = serde_json::from_value(value).map_err(|e| Error::InvalidConfig {
            problems: vec![e.to_string()],
        })?;
        if let IpNet::V6(net) = conf.pod_cidr {
            return Err(Error::UnsupportedField {
                field: "podCIDR".into(),
                why: format!("{net}: IPv6 pools are not supported yet"),
            });
        }
        if let Some(kind) = conf
            .ipam
            .as_ref()
            .and_then(|i| i.get("type"))
            .filter(|t| t.as_str() != Some("trellis"))
        {
            return Err(Error::UnsupportedField {
                field: "ipam.type".into(),
                why: format!(
                    "{kind}: trellis-cni allocates from podCIDR itself and delegates to no IPAM plugin"
                ),
            });
        }
        let problems = conf.problems();
        if !problems.is_empty() {
            return Err(Error::InvalidConfig { problems });
        }
        Ok(conf)
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            problems.push(format!(
                "name: {:?} must be non-empty and only letters, digits, '_', '.', '-'",
                self.name
            ));
        }
        if self.pod_cidr.prefix_len() > POOL_PREFIX_LEN_MAX {
            problems.push(format!(
                "podCIDR: {} is too small; the prefix must be /{POOL_PREFIX_LEN_MAX} or shorter",
                self.pod_cidr
            ));
        }
        if self.pod_cidr.prefix_len() < POOL_PREFIX_LEN_MIN {
            problems.push(format!(
                "podCIDR: {} is too large; the prefix must be /{POOL_PREFIX_LEN_MIN} or longer",
                self.pod_cidr
            ));
        }
        if !self.state_dir.is_absolute() {
            problems.push(format!(
                "stateDir: {} must be an absolute path",
                self.state_dir.display()
            ));
        }
        if let Some(mtu) = self.mtu
            && !(68..=65535).contains(&mtu)
        {
            problems.push(format!("mtu: {mtu} is outside 68..=65535"));
        }
        if let Some(dp) = &self.datapath
            && !dp.pin_dir.is_absolute()
        {
            problems.push(format!(
                "datapath.pinDir: {} must be an absolute path",
                dp.pin_dir.display()
            ));
        }
        problems.extend(crate::multus::check_networks(&self.networks));
        problems
    }

    /// The pool's CIDR, network-aligned (`10.69.1.7/24` is read as `10.69.1.0/24`).
    pub fn pool_cidr(&self) -> Ipv4Net {
        match self.pod_cidr {
            IpNet::V4(net) => net.trunc(),
            // `parse` rejects IPv6; a hand-built NetConf gets an empty pool instead of a panic.
            IpNet::V6(_) => Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 32).expect("32 is a valid prefix"),
        }
    }

    /// Whether the config's `cniVersion` is at least `min` (both `major.minor.patch`).
    pub fn version_at_least(&self, min: &str) -> bool {
        version_tuple(&self.cni_version) >= version_tuple(min)
    }

    pub fn mtu(&self) -> u32 {
        self.mtu.unwrap_or(MTU_DEFAULT)
    }

    /// `prevResult`, decoded. Missing is `Ok(None)`; malformed is code 6.
    pub fn prev_result(&self) -> Result<Option<CniResult>, Error> {
        self.prev_result
            .as_ref()
            .map(|v| serde_json::from_value(v.clone()).map_err(Error::Decode))
            .transpose()
    }
}

fn version_tuple(v: &str) -> (u32, u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next())
}

/// The `cniVersion` of a config that may not parse, if it names one this plugin speaks; error
/// replies carry it, as the spec asks.
pub fn peek_version(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let version = v.get("cniVersion")?.as_str()?;
    SUPPORTED_VERSIONS
        .contains(&version)
        .then(|| version.to_string())
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

/// The per-attachment environment (`CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`,
/// `CNI_PATH`).
#[derive(Debug, Clone, Default)]
pub struct CmdArgs {
    pub container_id: String,
    /// A path to the network namespace: `/var/run/netns/NAME` or `/proc/PID/ns/net`. May be
    /// absent on DEL.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS`, `K=V;K=V`, kept for callers; the plugin acts on none of them.
    pub args: Vec<(String, String)>,
    pub path: Vec<PathBuf>,
}

pub use model::multus::IFNAME_LEN_MAX;

impl CmdArgs {
    /// Reads the environment through `env` (so tests need not touch the process's). Which
    /// variables are required depends on the command, as in the spec's "Parameters" section.
    pub fn from_env(
        command: Command,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<CmdArgs, Error> {
        let get = |var| env(var).filter(|v| !v.is_empty());
        let container_id = get("CNI_CONTAINERID").ok_or(Error::InvalidEnv {
            var: "CNI_CONTAINERID",
            why: "missing".into(),
        })?;
        // Spec: "Must start with an alphanumeric character, optionally followed by any
        // combination of one or more alphanumeric characters, underscore, dot or hyphen."
        if !container_id.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !container_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return Err(Error::InvalidEnv {
                var: "CNI_CONTAINERID",
                why: format!(
                    "{container_id:?} must start with a letter or digit, then letters, digits, '_', '.', '-'"
                ),
            });
        }
        let ifname = get("CNI_IFNAME").ok_or(Error::InvalidEnv {
            var: "CNI_IFNAME",
            why: "missing".into(),
        })?;
        if let Err(why) = crate::multus::check_ifname(&ifname) {
            return Err(Error::InvalidEnv {
                var: "CNI_IFNAME",
                why,
            });
        }
        let netns = get("CNI_NETNS").map(PathBuf::from);
        if netns.is_none() && command != Command::Del {
            return Err(Error::InvalidEnv {
                var: "CNI_NETNS",
                why: "missing".into(),
            });
        }
        let args = get("CNI_ARGS")
            .map(|a| {
                a.split(';')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| match kv.split_once('=') {
                        Some((k, v)) => (k.to_string(), v.to_string()),
                        None => (kv.to_string(), String::new()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let path = get("CNI_PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        Ok(CmdArgs {
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(json: &str) -> Result<NetConf, Error> {
        NetConf::parse(json.as_bytes())
    }

    const GOOD: &str = r#"{"cniVersion":"1.0.0","name":"trellis","type":"trellis-cni",
        "podCIDR":"10.69.1.0/24","stateDir":"/run/trellis","mtu":1450,
        "datapath":{"pinDir":"/sys/fs/bpf/trellis/node-1"},"somethingElse":[1,2]}"#;

    #[test]
    fn parses_the_documented_config_and_ignores_unknown_fields() {
        let c = conf(GOOD).expect("valid");
        assert_eq!(c.pool_cidr().to_string(), "10.69.1.0/24");
        assert_eq!(c.mtu(), 1450);
        assert_eq!(
            c.datapath.expect("set").pin_dir,
            PathBuf::from("/sys/fs/bpf/trellis/node-1")
        );
    }

    #[test]
    fn codes_for_bad_input() {
        assert_eq!(conf("{not json").expect_err("bad").code(), 6);
        assert_eq!(
            conf(&GOOD.replace("1.0.0", "9.9.9"))
                .expect_err("bad")
                .code(),
            1
        );
        assert_eq!(
            conf(&GOOD.replace("10.69.1.0/24", "fd00::/64"))
                .expect_err("bad")
                .code(),
            2
        );
        assert_eq!(
            conf(r#"{"cniVersion":"1.0.0"}"#).expect_err("bad").code(),
            7
        );
        assert_eq!(
            conf(&GOOD.replace("10.69.1.0/24", "10.0.0.0/8"))
                .expect_err("big")
                .code(),
            7
        );
        let delegated = GOOD.replace("\"mtu\"", r#""ipam":{"type":"host-local"},"mtu""#);
        assert_eq!(conf(&delegated).expect_err("ipam").code(), 2);
        let own = GOOD.replace("\"mtu\"", r#""ipam":{"type":"trellis"},"mtu""#);
        assert!(conf(&own).is_ok());
    }

    #[test]
    fn every_config_problem_is_reported_at_once() {
        let bad = GOOD
            .replace("\"trellis\"", "\"bad name\"")
            .replace("/24", "/31")
            .replace("\"/run/trellis\"", "\"relative\"")
            .replace("1450", "20");
        let Err(Error::InvalidConfig { problems }) = conf(&bad) else {
            panic!("expected InvalidConfig");
        };
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[test]
    fn versions_compare_numerically() {
        let mut c = conf(GOOD).expect("valid");
        assert!(c.version_at_least("0.4.0") && c.version_at_least("1.0.0"));
        assert!(!c.version_at_least("1.1.0"));
        c.cni_version = "0.3.1".into();
        assert!(!c.version_at_least("0.4.0"));
        assert_eq!(peek_version(br#"{"cniVersion":"0.4.0","bad":"#), None);
        assert_eq!(
            peek_version(br#"{"cniVersion":"0.4.0"}"#).as_deref(),
            Some("0.4.0")
        );
    }

    #[test]
    fn env_rules() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let full = env(&[
            ("CNI_CONTAINERID", "abc-1"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAME=p;IgnoreUnknown=1"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ]);
        let a = CmdArgs::from_env(Command::Add, full).expect("valid");
        assert_eq!(a.args[0], ("K8S_POD_NAME".into(), "p".into()));
        assert_eq!(a.path.len(), 2);
        let no_netns = env(&[("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")]);
        assert_eq!(
            CmdArgs::from_env(Command::Add, no_netns)
                .expect_err("netns")
                .code(),
            4
        );
        assert!(CmdArgs::from_env(Command::Del, no_netns).is_ok());
        let long = env(&[
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "a-very-long-interface"),
        ]);
        assert_eq!(
            CmdArgs::from_env(Command::Del, long)
                .expect_err("len")
                .code(),
            4
        );
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[ -~]{0,20}".prop_map(serde_json::Value::from),
            Just(serde_json::Value::from("10.69.1.0/24")),
            Just(serde_json::Value::from("1.0.0")),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("cniVersion".to_string()),
                        Just("name".to_string()),
                        Just("podCIDR".to_string()),
                        Just("stateDir".to_string()),
                        Just("mtu".to_string()),
                        Just("ipam".to_string()),
                        Just("prevResult".to_string()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Bad input is data: any bytes give a config or an error with a spec code, never a
        /// panic.
        #[test]
        fn parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Err(e) = NetConf::parse(&bytes) {
                prop_assert!([1, 2, 6, 7].contains(&e.code()));
            }
        }

        #[test]
        fn parse_never_panics_on_json(v in json_value()) {
            let bytes = serde_json::to_vec(&v).expect("serializes");
            if let Ok(c) = NetConf::parse(&bytes) {
                // What parses is usable: the pool is non-empty and bounded.
                let size = crate::ipam::pool_range(c.pool_cidr()).map(|(a, b)| b - a + 1);
                prop_assert!(size.is_some_and(|n| n <= 65_534));
                let _ = c.prev_result();
            }
        }
    }
}
