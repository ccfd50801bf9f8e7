//! The success result of ADD (spec 1.0 "Success" section), also read back as `prevResult`.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// An ADD result. Serialized in the spec 1.0 shape; for configs of 0.3.x/0.4.0 the `ips`
/// entries also carry the `version` those versions require.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Spec 1.1; set only in 1.1.0 results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the container; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Only in 0.3.x/0.4.0 results ("4" or "6").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl CniResult {
    /// `self` (a `prevResult` from an earlier plugin in the chain) followed by `ours`: the
    /// spec's "Plugins provided a prevResult ... must output it as their result, with any
    /// possible modifications made by that plugin included". Our `ips[].interface` indices
    /// are shifted past the earlier interfaces.
    pub fn chain(mut self, ours: CniResult) -> CniResult {
        let offset = self.interfaces.len();
        self.cni_version = ours.cni_version;
        self.interfaces.extend(ours.interfaces);
        self.ips.extend(ours.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + offset);
            ip
        }));
        self.routes.extend(ours.routes);
        if self.dns == Dns::default() {
            self.dns = ours.dns;
        }
        self
    }
}

/// The reply to VERSION.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    pub cni_version: String,
    pub supported_versions: Vec<String>,
}

impl VersionInfo {
    pub fn current() -> VersionInfo {
        VersionInfo {
            cni_version: crate::LATEST_VERSION.into(),
            supported_versions: crate::SUPPORTED_VERSIONS
                .iter()
                .map(|v| v.to_string())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_spec_1_0_result_and_writes_it_back_unchanged() {
        let text = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"lxc0123456789a","mac":"aa:bb:cc:dd:ee:ff"},{"name":"eth0","mac":"11:22:33:44:55:66","sandbox":"/var/run/netns/p"}],"ips":[{"address":"10.69.1.5/32","gateway":"169.254.1.1","interface":1}],"routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}],"dns":{}}"#;
        let r: CniResult = serde_json::from_str(text).expect("valid");
        assert_eq!(serde_json::to_string(&r).expect("serializes"), text);
    }

    #[test]
    fn chaining_keeps_the_earlier_result_and_shifts_our_indices() {
        let earlier: CniResult = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"x"}],"ips":[],"dns":{"nameservers":["10.0.0.10"]}}"#,
        )
        .expect("valid");
        let ours: CniResult = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","interfaces":[{"name":"lxc1"},{"name":"eth0","sandbox":"/p"}],"ips":[{"address":"10.69.1.5/32","interface":1}]}"#,
        )
        .expect("valid");
        let both = earlier.chain(ours);
        assert_eq!(both.interfaces.len(), 3);
        assert_eq!(both.ips[0].interface, Some(2));
        assert_eq!(both.dns.nameservers, ["10.0.0.10"]);
    }

    #[test]
    fn version_reply() {
        assert_eq!(
            serde_json::to_string(&VersionInfo::current()).expect("serializes"),
            r#"{"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#
        );
    }
}
