//! The pod annotation `k8s.v1.cni.cncf.io/networks` (Multus; the Network Plumbing WG's
//! multi-network spec, v1.2): which NetworkAttachmentDefinitions a pod joins. Pure: validation
//! reads it here, and `trellis-cni` resolves and runs it.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const ANNOTATION_NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
pub const ANNOTATION_NETWORK_STATUS: &str = "k8s.v1.cni.cncf.io/network-status";
/// The most attachments one pod may ask for.
pub const NETWORKS_MAX: usize = 32;
/// The longest Linux interface name (IFNAMSIZ less the NUL).
pub const IFNAME_LEN_MAX: usize = 15;

/// One element of the `networks` annotation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(
        default,
        alias = "interfaceRequest",
        skip_serializing_if = "Option::is_none"
    )]
    pub interface: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(
        default,
        rename = "default-route",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub default_route: Vec<IpAddr>,
    #[serde(default, rename = "cni-args", skip_serializing_if = "Option::is_none")]
    pub cni_args: Option<Map<String, Value>>,
}

/// A DNS-1123 label, as Multus requires of names and namespaces.
fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// An interface name a pod may ask for.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > IFNAME_LEN_MAX
        || name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.chars().any(char::is_whitespace)
    {
        return Err(format!(
            "interface {name:?}: 1 to {IFNAME_LEN_MAX} characters, no '/', ':' or spaces"
        ));
    }
    Ok(())
}

/// The annotation's selections, each with its namespace (the pod's when not given).
pub fn parse_networks(text: &str, pod_namespace: &str) -> Result<Vec<Selection>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let mut list: Vec<Selection> = if text.contains(['[', '{', '"']) {
        serde_json::from_str(text).map_err(|e| format!("not a JSON list of networks: {e}"))?
    } else {
        text.split(',')
            .map(|item| {
                let item = item.trim();
                let (rest, ifname) = match item.split_once('@') {
                    Some((r, i)) if !i.contains('@') => (r, Some(i.to_string())),
                    Some(_) => return Err(format!("{item:?}: more than one '@'")),
                    None => (item, None),
                };
                let (namespace, name) = match rest.split_once('/') {
                    Some((n, m)) if !m.contains('/') => (n.to_string(), m.to_string()),
                    Some(_) => return Err(format!("{item:?}: more than one '/'")),
                    None => (String::new(), rest.to_string()),
                };
                Ok(Selection {
                    name,
                    namespace,
                    interface: ifname,
                    ..Selection::default()
                })
            })
            .collect::<Result<_, _>>()?
    };
    if list.len() > NETWORKS_MAX {
        return Err(format!(
            "{} networks; at most {NETWORKS_MAX} per pod",
            list.len()
        ));
    }
    for (i, s) in list.iter_mut().enumerate() {
        let at = |m: String| format!("networks[{i}] ({}): {m}", s.name);
        if s.namespace.is_empty() {
            s.namespace = pod_namespace.to_string();
        }
        if !is_label(&s.name) {
            return Err(at("name: not a DNS-1123 label".into()));
        }
        if !is_label(&s.namespace) {
            return Err(at(format!(
                "namespace {:?}: not a DNS-1123 label",
                s.namespace
            )));
        }
        if let Some(ifname) = &s.interface {
            check_ifname(ifname).map_err(at)?;
        }
        if let Some(mac) = &s.mac
            && !is_mac(mac)
        {
            return Err(at(format!("mac {mac:?}: not a MAC address")));
        }
        for ip in &s.ips {
            // The static IPAM plugin takes addresses with their prefix only.
            if ip.parse::<IpNet>().is_err() {
                return Err(at(format!(
                    "ips: {ip:?} is not an address with its prefix (10.10.33.20/24)"
                )));
            }
        }
    }
    Ok(list)
}
