//! 802.1Q trunks on kernels without VLAN devices (this machine's has none): the tc programs
//! of `bpf/vlan.c` push a port's VLAN tag on the way in and pop it on the way out, so several
//! VLANs share one bridge (a trunk) and a capture on it shows each frame's 802.1Q tag.
//!
//! - An access port takes untagged frames, tags them with its VLAN and passes them on (a
//!   switch's access port: the frame goes into the bridge it is a port of) or redirects them
//!   to another interface (a node's VLAN parent to the node's trunk). On its egress (a
//!   bridge's access port only) a frame of its VLAN leaves untagged and any other is dropped.
//! - A trunk takes tagged frames only: the tag picks where the frame goes, untagged.
//!
//! [`attach`] sets every port of one network namespace at once (the calling thread's), from
//! one load of the object: the tc filters keep the programs and maps after it returns, and
//! nothing is pinned (the ports are set when their links are made, and go with them).

use aya::EbpfLoader;
use aya::maps::HashMap as BpfHashMap;
use aya::programs::tc::TcAttachType;

use crate::{Error, VLAN_OBJECT, attach_loaded, classifier};

/// The largest VLAN id (802.1Q's 12 bits; 4095 is reserved).
pub const VID_MAX: u16 = 4094;

/// One interface's part in the trunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Port {
    /// Untagged frames of VLAN `vid`: tagged as they come in, and passed on (`redirect`
    /// None: a bridge port, which also untags its VLAN's frames going out and drops the
    /// rest) or redirected to the interface `redirect` (a node's trunk).
    Access {
        iface: String,
        vid: u16,
        redirect: Option<String>,
    },
    /// Tagged frames in: each VLAN's to its interface, untagged; untagged frames and other
    /// VLANs dropped.
    Trunk {
        iface: String,
        vlans: Vec<(u16, String)>,
    },
}

fn index(iface: &str) -> Result<u32, Error> {
    nix::net::if_::if_nametoindex(iface).map_err(|e| Error::Attach {
        iface: iface.into(),
        what: "finding the interface",
        detail: e.to_string(),
    })
}

fn check_vid(iface: &str, vid: u16) -> Result<(), Error> {
    if vid == 0 || vid > VID_MAX {
        return Err(Error::Attach {
            iface: iface.into(),
            what: "VLAN id",
            detail: format!("{vid} is not a VLAN id (1 to {VID_MAX})"),
        });
    }
    Ok(())
}

/// Loads the programs and attaches every port in the calling thread's network namespace.
pub fn attach(ports: &[Port]) -> Result<(), Error> {
    let mut ebpf = EbpfLoader::new().load(VLAN_OBJECT)?;
    let mut access: BpfHashMap<_, u32, [u32; 2]> = take_map(&mut ebpf, "vlan_access")?;
    let mut trunk: BpfHashMap<_, [u32; 2], u32> = take_map(&mut ebpf, "vlan_trunk")?;
    let full = |name: &'static str| move |source| Error::Map { name, source };
    // The maps first: a program never runs on a port it has no entry for.
    for p in ports {
        match p {
            Port::Access {
                iface,
                vid,
                redirect,
            } => {
                check_vid(iface, *vid)?;
                let to = match redirect {
                    Some(r) => index(r)?,
                    None => 0,
                };
                access
                    .insert(index(iface)?, [u32::from(*vid), to], 0)
                    .map_err(full("vlan_access"))?;
            }
            Port::Trunk { iface, vlans } => {
                let at = index(iface)?;
                for (vid, to) in vlans {
                    check_vid(iface, *vid)?;
                    trunk
                        .insert([at, u32::from(*vid)], index(to)?, 0)
                        .map_err(full("vlan_trunk"))?;
                }
            }
        }
    }
    for name in ["vlan_tag", "vlan_access_out", "vlan_trunk_in"] {
        classifier(&mut ebpf, name)?
            .load()
            .map_err(|source| Error::Program {
                name: name.into(),
                source,
            })?;
    }
    for p in ports {
        let mut at = |name: &str, iface: &str, hook| {
            attach_loaded(classifier(&mut ebpf, name)?, iface, hook, name)
        };
        match p {
            Port::Access {
                iface, redirect, ..
            } => {
                at("vlan_tag", iface, TcAttachType::Ingress)?;
                if redirect.is_none() {
                    at("vlan_access_out", iface, TcAttachType::Egress)?;
                }
            }
            Port::Trunk { iface, .. } => at("vlan_trunk_in", iface, TcAttachType::Ingress)?,
        }
    }
    Ok(())
}

fn take_map<T>(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| Error::Attach {
        iface: "-".into(),
        what: "map missing from the object",
        detail: name.into(),
    })?;
    T::try_from(map).map_err(|source| Error::Map { name, source })
}
