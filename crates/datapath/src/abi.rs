//! Rust mirrors of the map keys and values in `bpf/trellis.h`.
//!
//! The kernel sees bytes; these types encode themselves into exactly the bytes the C structs
//! hold (native byte order for counters and ids, network byte order for addresses and ports,
//! explicit zero padding), so no `unsafe` cast is needed. `SIZE` of each type is asserted
//! against the C layout by a test that reads the compiled object's BTF.

use std::net::Ipv4Addr;

/// Bounds of the maps, as in `trellis.h`.
pub const LB4_SERVICES_MAX: usize = 65536;
pub const LB4_BACKENDS_MAX: usize = 65536;
/// Slots of a frontend's Maglev table per map entry.
pub const LB4_MAGLEV_CHUNK: usize = 1024;
/// Maglev chunks over all external frontends (4 KiB each, allocated as used).
pub const LB4_MAGLEV_MAX: usize = 65536;

pub const SVC_F_EXTERNAL: u8 = 0x01;
pub const SVC_F_AFFINITY: u8 = 0x02;
pub const BACKEND_F_LOCAL: u8 = 0x01;
pub const NODE_F_MASQUERADE: u32 = 0x01;
pub const NODE_F_DSR: u32 = 0x02;
pub const NODE_F_DSR_TCP_ONLY: u32 = 0x04;
pub const NODE_F_EVENTS: u32 = 0x08;

/// IP protocol numbers as the maps hold them.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// The counters of the `stats` per-CPU array, in index order.
pub const STAT_NAMES: [&str; 12] = [
    "packets",
    "service_new",
    "nat_hit",
    "no_backend",
    "nat_full",
    "masq_new",
    "events_lost",
    "policy_drop",
    "policy_ct_full",
    "policy_verdict",
    "spoofed",
    "unsupported_l3",
];

/// Policy map bounds, as in `trellis.h`.
pub const IPCACHE4_MAX: usize = 65536;
pub const POLICY_MAX: usize = 262_144;
pub const ENDPOINTS4_MAX: usize = 4096;
/// `endpoint4.flags`: the directions in default deny.
pub const EP_F_INGRESS: u32 = 0x01;
pub const EP_F_EGRESS: u32 = 0x02;
pub const POLICY_DIR_INGRESS: u8 = 0;
pub const POLICY_DIR_EGRESS: u8 = 1;
pub const POLICY_F_DENY: u32 = 0x01;
/// `policy_value.flags`: the entry names a protocol; and a port (prefix) or ICMP type. The
/// datapath makes Hubble's match type of them.
pub const POLICY_F_PROTO: u32 = 0x02;
pub const POLICY_F_PORT: u32 = 0x04;
/// Pod veths whose pod address the datapath checks (`pod_veth4`, LRU).
pub const POD_VETHS_MAX: usize = 16384;
/// `flow_event.rule` of a drop no rule asked for (default deny).
pub const RULE_DEFAULT_DENY: u32 = 0xffff_fffe;
/// `flow_event.reason` of a policy drop (Hubble's POLICY_DENIED).
pub const DROP_POLICY: u32 = 133;
/// `flow_event.reason`: a pod sent from an address not its own (INVALID_SOURCE_IP).
pub const DROP_INVALID_SIP: u32 = 132;
/// `flow_event.reason`: IPv6 (or another protocol but IPv4 and ARP) at a pod's veth
/// (UNSUPPORTED_L3_PROTOCOL).
pub const DROP_UNSUPPORTED_L3: u32 = 139;
/// Bits of a policy key always matched (endpoint, identity, direction).
pub const POLICY_KEY_FIXED_BITS: u32 = 72;

/// `flow_event.kind`: Cilium's monitor message types.
/// How often the agent drains the events ring by itself (the programs wake it only when a
/// quarter of the ring is waiting), as in `trellis.h`.
pub const EVENTS_DRAIN_MS: u64 = 100;
pub const EVENT_DROP: u8 = 1;
pub const EVENT_TRACE: u8 = 4;
pub const EVENT_POLICY_VERDICT: u8 = 5;
/// `flow_event.point`: the hook that saw the packet.
pub const POINT_FROM_POD: u8 = 1;
pub const POINT_TO_POD: u8 = 2;
pub const POINT_FROM_NETDEV: u8 = 3;
pub const POINT_TO_NETDEV: u8 = 4;

fn ip_bytes(ip: Ipv4Addr) -> [u8; 4] {
    ip.octets()
}

fn ip_from(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// `struct lb4_key`: a frontend address, port and protocol; slot 0 is the master entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lb4Key {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
    pub slot: u16,
}

impl Lb4Key {
    pub const SIZE: usize = 12;

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&ip_bytes(self.addr));
        b[4..6].copy_from_slice(&self.port.to_be_bytes());
        b[6] = self.proto;
        b[8..10].copy_from_slice(&self.slot.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            addr: ip_from(&b[0..4]),
            port: u16::from_be_bytes([b[4], b[5]]),
            proto: b[6],
            slot: u16::from_ne_bytes([b[8], b[9]]),
        }
    }
}

/// `struct lb4_service`: the master entry (id = frontend id, count = backend slots) or a
/// backend slot (id = backend id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lb4Service {
    pub id: u32,
    pub count: u16,
    pub flags: u8,
    pub affinity_timeout_s: u32,
}

impl Lb4Service {
    pub const SIZE: usize = 12;

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&self.id.to_ne_bytes());
        b[4..6].copy_from_slice(&self.count.to_ne_bytes());
        b[6] = self.flags;
        b[8..12].copy_from_slice(&self.affinity_timeout_s.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            id: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            count: u16::from_ne_bytes([b[4], b[5]]),
            flags: b[6],
            affinity_timeout_s: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        }
    }
}

/// `struct lb4_backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lb4Backend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
    /// The LAN address of the backend's node (unspecified when unknown): DSR tunnels to it.
    pub node_ip: Ipv4Addr,
}

impl Lb4Backend {
    pub const SIZE: usize = 12;

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&ip_bytes(self.addr));
        b[4..6].copy_from_slice(&self.port.to_be_bytes());
        b[6] = self.proto;
        b[7] = self.flags;
        b[8..12].copy_from_slice(&ip_bytes(self.node_ip));
        b
    }

    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            addr: ip_from(&b[0..4]),
            port: u16::from_be_bytes([b[4], b[5]]),
            proto: b[6],
            flags: b[7],
            node_ip: ip_from(&b[8..12]),
        }
    }
}

/// `struct lb4_maglev_key`: one chunk of a frontend's Maglev table (slots
/// `chunk * LB4_MAGLEV_CHUNK ..`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MaglevKey {
    pub frontend_id: u32,
    pub chunk: u32,
}

/// `struct lb4_maglev_chunk`: the backend id of each slot of a chunk (0: none, the random
/// choice then).
pub type MaglevChunk = [u32; LB4_MAGLEV_CHUNK];

impl MaglevKey {
    pub const SIZE: usize = 8;

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&self.frontend_id.to_ne_bytes());
        b[4..8].copy_from_slice(&self.chunk.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            frontend_id: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            chunk: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

/// `struct node_config`: index 0 of the `node_config` array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub node_ip: Ipv4Addr,
    /// The native routing CIDR (no masquerade inside it), as address and prefix length.
    pub cluster_cidr: (Ipv4Addr, u8),
    pub maglev_m: u32,
    pub flags: u32,
}

impl NodeConfig {
    pub const SIZE: usize = 24;
    /// Where `flags` sits in the bytes.
    pub const FLAGS_AT: std::ops::Range<usize> = 16..20;

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        let prefix = u32::from(self.cluster_cidr.1.min(32));
        let mask: u32 = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        let addr = u32::from(self.cluster_cidr.0) & mask;
        b[0..4].copy_from_slice(&ip_bytes(self.node_ip));
        b[4..8].copy_from_slice(&addr.to_be_bytes());
        b[8..12].copy_from_slice(&mask.to_be_bytes());
        b[12..16].copy_from_slice(&self.maglev_m.to_ne_bytes());
        b[Self::FLAGS_AT].copy_from_slice(&self.flags.to_ne_bytes());
        b
    }
}

/// `struct policy_key` without its prefix length: a local endpoint's entry for a peer identity
/// (0: any), direction, protocol (0: any) and the first `port_bits` bits of the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    pub ep: Ipv4Addr,
    pub identity: u32,
    pub dir: u8,
    pub proto: u8,
    pub port: u16,
    pub port_bits: u8,
}

impl PolicyKey {
    /// The LPM key's data (after the prefix length).
    pub const DATA: usize = 12;

    /// (prefix length, data) as the LPM trie takes them; the port is masked to its prefix.
    pub fn to_lpm(&self) -> (u32, [u8; Self::DATA]) {
        let mut b = [0u8; Self::DATA];
        b[0..4].copy_from_slice(&ip_bytes(self.ep));
        b[4..8].copy_from_slice(&self.identity.to_ne_bytes());
        b[8] = self.dir;
        let bits = u32::from(self.port_bits.min(16));
        let prefix = if self.proto == 0 {
            POLICY_KEY_FIXED_BITS
        } else {
            b[9] = self.proto;
            let mask = if bits == 0 {
                0
            } else {
                u16::MAX << (16 - bits)
            };
            b[10..12].copy_from_slice(&(self.port & mask).to_be_bytes());
            POLICY_KEY_FIXED_BITS + 8 + bits
        };
        (prefix, b)
    }
}

/// `struct policy_value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyValue {
    pub rule: u32,
    pub flags: u32,
}

impl PolicyValue {
    pub const SIZE: usize = 8;

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&self.rule.to_ne_bytes());
        b[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        b
    }
}

/// `struct endpoint4`, keyed by the endpoint's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint4 {
    pub identity: u32,
    pub flags: u32,
}

impl Endpoint4 {
    pub const SIZE: usize = 8;

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&self.identity.to_ne_bytes());
        b[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        b
    }
}

/// Sizes of the structs the programs share with us, by C name (checked against BTF).
pub const STRUCT_SIZES: [(&str, usize); 16] = [
    ("flow_event", 48),
    ("ipcache4_key", 8),
    ("ipcache4_value", 8),
    ("endpoint4", Endpoint4::SIZE),
    ("policy_key", 4 + PolicyKey::DATA),
    ("policy_value", PolicyValue::SIZE),
    ("lb4_key", Lb4Key::SIZE),
    ("lb4_service", Lb4Service::SIZE),
    ("lb4_backend", Lb4Backend::SIZE),
    ("lb4_maglev_key", MaglevKey::SIZE),
    ("lb4_maglev_chunk", 4 * LB4_MAGLEV_CHUNK),
    ("nat4_key", 16),
    ("nat4_entry", 32),
    ("affinity4_key", 8),
    ("affinity4_value", 16),
    ("node_config", NodeConfig::SIZE),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_use_network_order_for_wire_fields() {
        let k = Lb4Key {
            addr: Ipv4Addr::new(10, 96, 0, 10),
            port: 53,
            proto: PROTO_UDP,
            slot: 3,
        };
        let b = k.to_bytes();
        assert_eq!(&b[0..4], &[10, 96, 0, 10]);
        assert_eq!(&b[4..6], &[0, 53]);
        assert_eq!(Lb4Key::from_bytes(&b), k);
        let s = Lb4Service {
            id: 7,
            count: 2,
            flags: SVC_F_AFFINITY,
            affinity_timeout_s: 10800,
        };
        assert_eq!(Lb4Service::from_bytes(&s.to_bytes()), s);
        let be = Lb4Backend {
            addr: Ipv4Addr::new(10, 69, 1, 5),
            port: 8080,
            proto: 6,
            flags: 1,
            node_ip: Ipv4Addr::new(10, 10, 30, 11),
        };
        assert_eq!(Lb4Backend::from_bytes(&be.to_bytes()), be);
        let m = MaglevKey {
            frontend_id: 1,
            chunk: 15,
        };
        assert_eq!(MaglevKey::from_bytes(&m.to_bytes()), m);
    }

    #[test]
    fn node_config_masks_the_cidr() {
        let c = NodeConfig {
            node_ip: Ipv4Addr::new(10, 10, 30, 11),
            cluster_cidr: (Ipv4Addr::new(10, 69, 3, 0), 16),
            maglev_m: 16381,
            flags: NODE_F_MASQUERADE,
        };
        let b = c.to_bytes();
        assert_eq!(&b[4..8], &[10, 69, 0, 0]);
        assert_eq!(&b[8..12], &[255, 255, 0, 0]);
    }
}
