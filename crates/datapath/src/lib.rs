//! The kernel boundary: the eBPF programs in C (`bpf/`), their loader (aya) and typed maps.
//!
//! One node's datapath lives under a pin directory (`/sys/fs/bpf/trellis/<node>/`): the maps
//! (pinned by name, so a restarted agent finds the same connection-tracking entries) and the
//! four programs (`from_pod`, `to_pod`, `from_netdev`, `to_netdev`), pinned so the CNI plugin
//! can attach them to a new pod's veth without loading anything itself.
//!
//! What is not here: deciding what goes into the maps. The fabric compiles Services into
//! [`Desired`] contents; [`Maps::sync`] makes the kernel maps equal to them by the smallest
//! change. `aya` is used only in this crate.

pub mod abi;
pub mod link;
pub mod vlan;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use aya::programs::tc::{self, NlOptions, SchedClassifier, TcAttachOptions, TcAttachType};
use aya::{Ebpf, EbpfLoader};

pub use abi::{
    Endpoint4, Lb4Backend, Lb4Key, Lb4Service, MaglevKey, NodeConfig, PolicyKey, PolicyValue,
};

/// The compiled load-balancer object (built by build.rs with clang -target bpf, or the
/// committed `bpf/prebuilt/lb.o` where no clang is).
pub static LB_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb.o"));

/// The 802.1Q trunk programs (`bpf/vlan.c`; see [`vlan`]), built as [`LB_OBJECT`] is.
pub static VLAN_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vlan.o"));

/// Where [`LB_OBJECT`] (and [`VLAN_OBJECT`]) came from: `clang` (compiled in this build) or
/// `prebuilt`.
pub const LB_ORIGIN: &str = env!("TRELLIS_BPF_ORIGIN");

/// The hash of the sources in `bpf/` this build saw (`bpf/prebuilt/lb.o.source` records the
/// one the prebuilt object was made from).
pub const LB_SOURCE_HASH: &str = env!("TRELLIS_BPF_SOURCE_HASH");

/// The first line of `clang --version` of the clang that compiled [`LB_OBJECT`]; empty when
/// prebuilt.
pub const LB_CLANG: &str = env!("TRELLIS_BPF_CLANG");

/// The programs, by the hook they run at.
pub const PROG_FROM_POD: &str = "from_pod";
pub const PROG_TO_POD: &str = "to_pod";
pub const PROG_FROM_NETDEV: &str = "from_netdev";
pub const PROG_TO_NETDEV: &str = "to_netdev";
const PROGRAMS: [&str; 4] = [PROG_FROM_POD, PROG_TO_POD, PROG_FROM_NETDEV, PROG_TO_NETDEV];

/// Where trellis pins a node's maps and programs.
pub fn pin_dir(node: &str) -> PathBuf {
    Path::new("/sys/fs/bpf/trellis").join(node)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bpffs is not mounted at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf): {0}")]
    NoBpffs(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("interface {iface}: {what}: {detail}")]
    Attach {
        iface: String,
        what: &'static str,
        detail: String,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {name} would exceed its bound of {max} entries ({wanted} wanted)")]
    Full {
        name: &'static str,
        max: usize,
        wanted: usize,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there (a fresh VM or netns test box).
pub fn ensure_bpffs() -> Result<(), Error> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(io("reading mounts"))?;
    if mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    let out = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .output()
        .map_err(io("running mount"))?;
    if !out.status.success() {
        return Err(Error::NoBpffs(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// Loads the programs and maps of one node, pinning both under `pin_dir`. Maps already pinned
/// there (a previous run of the agent) are reused with their contents; programs are replaced.
pub fn load(pin_dir: &Path) -> Result<(), Error> {
    ensure_bpffs()?;
    std::fs::create_dir_all(pin_dir).map_err(io(format!("creating {}", pin_dir.display())))?;
    let mut ebpf: Ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(LB_OBJECT)?;
    for name in PROGRAMS {
        let prog = classifier(&mut ebpf, name)?;
        prog.load().map_err(|source| Error::Program {
            name: name.into(),
            source,
        })?;
        let path = prog_pin(pin_dir, name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("removing {}", path.display()))(e)),
        }
        prog.pin(&path).map_err(|e| Error::Attach {
            iface: "-".into(),
            what: "pinning program",
            detail: format!("{}: {e}", path.display()),
        })?;
    }
    tracing::debug!(pin_dir = %pin_dir.display(), "datapath loaded");
    Ok(())
}

/// The tc program `name` of a loaded object.
fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier, Error> {
    ebpf.program_mut(name)
        .ok_or_else(|| Error::Attach {
            iface: "-".into(),
            what: "program missing from the object",
            detail: name.into(),
        })?
        .try_into()
        .map_err(|source| Error::Program {
            name: name.into(),
            source,
        })
}

fn prog_pin(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join(format!("prog_{name}"))
}

/// Attaches the pinned program `name` to `iface` at `hook`, replacing an earlier trellis
/// program there. Classic tc (netlink) filters, so the attachment outlives this process.
fn attach(pin_dir: &Path, iface: &str, hook: TcAttachType, name: &str) -> Result<(), Error> {
    let mut prog =
        SchedClassifier::from_pin(prog_pin(pin_dir, name)).map_err(|source| Error::Program {
            name: name.into(),
            source,
        })?;
    attach_loaded(&mut prog, iface, hook, name)
}

/// Attaches a loaded program to `iface` at `hook` (a clsact qdisc added if none), replacing
/// an earlier one of that name there; the filter stays in the kernel after this process.
fn attach_loaded(
    prog: &mut SchedClassifier,
    iface: &str,
    hook: TcAttachType,
    name: &str,
) -> Result<(), Error> {
    if let Err(e) = tc::qdisc_add_clsact(iface) {
        let text = e.to_string();
        // EEXIST (the kernel's text for it here: "Exclusivity flag on, cannot modify"): a
        // clsact qdisc is already there, which is what we want.
        if !text.contains("exists") && !text.contains("Exclusivity flag on") {
            return Err(Error::Attach {
                iface: iface.into(),
                what: "adding clsact",
                detail: text,
            });
        }
    }
    // Detaching what is not there is fine: a first attach.
    let _ = tc::qdisc_detach_program(iface, hook, name);
    let id = prog
        .attach_with_options(iface, hook, TcAttachOptions::Netlink(NlOptions::default()))
        .map_err(|source| Error::Program {
            name: name.into(),
            source,
        })?;
    let link = prog.take_link(id).map_err(|source| Error::Program {
        name: name.into(),
        source,
    })?;
    // The filter stays in the kernel; dropping the link would detach it.
    std::mem::forget(link);
    tracing::debug!(iface, program = name, "attached tc program");
    Ok(())
}

/// Attaches the pod programs to a pod's host-side veth (called by the CNI plugin). With the
/// veth's ifindex and the pod's address, the programs drop what the pod sends from any
/// other address; that entry is written first, so no packet passes unchecked.
pub fn attach_endpoint(
    pin_dir: &Path,
    host_iface: &str,
    pod: Option<(u32, std::net::Ipv4Addr)>,
) -> Result<(), Error> {
    if let Some((ifindex, addr)) = pod {
        let name = "pod_veth4";
        let mut veths: BpfHashMap<MapData, u32, [u8; 4]> = open(pin_dir, name)?
            .try_into()
            .map_err(|source| Error::Map { name, source })?;
        veths
            .insert(ifindex, addr.octets(), 0)
            .map_err(|source| Error::Map { name, source })?;
    }
    attach(pin_dir, host_iface, TcAttachType::Ingress, PROG_FROM_POD)?;
    attach(pin_dir, host_iface, TcAttachType::Egress, PROG_TO_POD)
}

/// Attaches the node-device programs to the node's LAN interface.
pub fn attach_netdev(pin_dir: &Path, iface: &str) -> Result<(), Error> {
    attach(pin_dir, iface, TcAttachType::Ingress, PROG_FROM_NETDEV)?;
    attach(pin_dir, iface, TcAttachType::Egress, PROG_TO_NETDEV)
}

/// Removes a node's pins (maps and programs). Attached filters go with their interfaces.
pub fn unpin(pin_dir: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("removing {}", pin_dir.display()))(e)),
    }
}

/// What the service maps should hold: the fabric's plan turned into map entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub services: BTreeMap<Lb4Key, Lb4Service>,
    pub backends: BTreeMap<u32, Lb4Backend>,
    /// Each external frontend's Maglev table, by chunk.
    pub maglev: BTreeMap<MaglevKey, Box<abi::MaglevChunk>>,
    pub config: Option<NodeConfig>,
    /// Network policy; `None` leaves the policy maps as they are (the last good policy).
    pub policy: Option<PolicyDesired>,
}

/// What the policy maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyDesired {
    /// (prefix address, prefix length) to identity.
    pub ipcache: BTreeMap<(std::net::Ipv4Addr, u8), u32>,
    /// Local endpoints by address.
    pub endpoints: BTreeMap<std::net::Ipv4Addr, Endpoint4>,
    pub entries: BTreeMap<PolicyKey, PolicyValue>,
}

/// How many entries a sync wrote and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub written: usize,
    pub removed: usize,
}

type ServicesMap = BpfHashMap<MapData, [u8; Lb4Key::SIZE], [u8; Lb4Service::SIZE]>;
type BackendsMap = BpfHashMap<MapData, u32, [u8; Lb4Backend::SIZE]>;
type MaglevMap = BpfHashMap<MapData, [u8; MaglevKey::SIZE], abi::MaglevChunk>;

/// Handles on one node's pinned maps.
pub struct Maps {
    services: ServicesMap,
    backends: BackendsMap,
    maglev: MaglevMap,
    config: Array<MapData, [u8; NodeConfig::SIZE]>,
    stats: PerCpuArray<MapData, u64>,
    nat: BpfHashMap<MapData, [u8; 16], [u8; 32]>,
    ipcache: LpmTrie<MapData, [u8; 4], [u8; 8]>,
    endpoints: BpfHashMap<MapData, [u8; 4], [u8; Endpoint4::SIZE]>,
    policy: LpmTrie<MapData, [u8; PolicyKey::DATA], [u8; PolicyValue::SIZE]>,
}

impl std::fmt::Debug for Maps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Maps")
    }
}

fn open(pin_dir: &Path, name: &'static str) -> Result<Map, Error> {
    let data =
        MapData::from_pin(pin_dir.join(name)).map_err(|source| Error::Map { name, source })?;
    let info = data.info().map_err(|source| Error::Map { name, source })?;
    use aya::maps::MapType;
    Ok(
        match info
            .map_type()
            .map_err(|source| Error::Map { name, source })?
        {
            MapType::Hash => Map::HashMap(data),
            MapType::LruHash => Map::LruHashMap(data),
            MapType::Array => Map::Array(data),
            MapType::PerCpuArray => Map::PerCpuArray(data),
            MapType::RingBuf => Map::RingBuf(data),
            MapType::LpmTrie => Map::LpmTrie(data),
            _ => Map::Unsupported(data),
        },
    )
}

macro_rules! typed {
    ($pin:expr, $name:literal) => {
        open($pin, $name)?.try_into().map_err(|source| Error::Map {
            name: $name,
            source,
        })?
    };
}

impl Maps {
    /// Opens the maps pinned under `pin_dir` (after [`load`]). Key and value sizes are checked
    /// against the pinned maps by aya.
    pub fn open(pin_dir: &Path) -> Result<Maps, Error> {
        Ok(Maps {
            services: typed!(pin_dir, "lb4_services"),
            backends: typed!(pin_dir, "lb4_backends"),
            maglev: typed!(pin_dir, "lb4_maglev"),
            config: typed!(pin_dir, "node_config"),
            stats: typed!(pin_dir, "stats"),
            nat: typed!(pin_dir, "nat4"),
            ipcache: typed!(pin_dir, "ipcache4"),
            endpoints: typed!(pin_dir, "endpoints4"),
            policy: typed!(pin_dir, "policy4"),
        })
    }

    /// Makes the policy maps hold exactly `want`. Order keeps packets on the safe side: the
    /// ipcache and new entries first, then the endpoints' enforcement flags, then removals, so
    /// an endpoint is never enforced before its allows are in and a new deny is in before an
    /// old allow goes.
    ///
    /// `have`: what the maps hold, when the caller knows it (it programmed them last): the
    /// diff is then made in memory, without reading the maps back (a DNS answer for toFQDNs
    /// waits for this sync).
    pub fn sync_policy(
        &mut self,
        have: Option<&PolicyDesired>,
        want: &PolicyDesired,
    ) -> Result<SyncStats, Error> {
        let mut stats = SyncStats::default();
        self.sync_policy_into(have, want, &mut stats)?;
        Ok(stats)
    }

    /// Adds policy entries without a diff (what a first DNS answer for toFQDNs opens): the
    /// policy entries first, then the ipcache entries that map addresses to their identities
    /// (make before break). `programmed`, what the maps held, takes them too; after an error
    /// it is no longer known (the caller reads the maps back next time).
    pub fn add_policy(
        &mut self,
        programmed: &mut PolicyDesired,
        add: &PolicyDesired,
    ) -> Result<SyncStats, Error> {
        for (name, max, wanted) in [
            (
                "ipcache4",
                abi::IPCACHE4_MAX,
                programmed.ipcache.len() + add.ipcache.len(),
            ),
            (
                "policy4",
                abi::POLICY_MAX,
                programmed.entries.len() + add.entries.len(),
            ),
        ] {
            if wanted > max {
                return Err(Error::Full { name, max, wanted });
            }
        }
        let mut stats = SyncStats::default();
        let none = BTreeMap::new();
        lpm_write(
            &mut self.policy,
            &none,
            &policy_bytes(add),
            "policy4",
            &mut stats,
        )?;
        let none = BTreeMap::new();
        lpm_write(
            &mut self.ipcache,
            &none,
            &ipcache_bytes(add),
            "ipcache4",
            &mut stats,
        )?;
        programmed
            .entries
            .extend(add.entries.iter().map(|(k, v)| (*k, *v)));
        programmed
            .ipcache
            .extend(add.ipcache.iter().map(|(k, v)| (*k, *v)));
        Ok(stats)
    }

    fn sync_policy_into(
        &mut self,
        have: Option<&PolicyDesired>,
        want: &PolicyDesired,
        stats: &mut SyncStats,
    ) -> Result<(), Error> {
        for (name, max, wanted) in [
            ("ipcache4", abi::IPCACHE4_MAX, want.ipcache.len()),
            ("endpoints4", abi::ENDPOINTS4_MAX, want.endpoints.len()),
            ("policy4", abi::POLICY_MAX, want.entries.len()),
        ] {
            if wanted > max {
                return Err(Error::Full { name, max, wanted });
            }
        }
        let err = |name: &'static str| move |source| Error::Map { name, source };
        // Make before break: a new identity's policy entries are in place before an address
        // maps to it, and an address stops mapping to an identity before its entries go. So
        // an address answered for toFQDNs (a /32 identity of its own) never passes through
        // a state where its new identity has no entries.
        let have_policy = match have {
            Some(h) => policy_bytes(h),
            None => lpm_read(&self.policy, "policy4")?,
        };
        let want_policy = policy_bytes(want);
        lpm_write(
            &mut self.policy,
            &have_policy,
            &want_policy,
            "policy4",
            stats,
        )?;
        let have_ipcache = match have {
            Some(h) => ipcache_bytes(h),
            None => lpm_read(&self.ipcache, "ipcache4")?,
        };
        let want_ipcache = ipcache_bytes(want);
        lpm_write(
            &mut self.ipcache,
            &have_ipcache,
            &want_ipcache,
            "ipcache4",
            stats,
        )?;
        let have_endpoints = match have {
            Some(h) => h
                .endpoints
                .iter()
                .map(|(a, e)| (a.octets(), e.to_bytes()))
                .collect(),
            None => read_all(&self.endpoints, "endpoints4")?,
        };
        for (addr, ep) in &want.endpoints {
            let (k, v) = (addr.octets(), ep.to_bytes());
            if have_endpoints.get(&k) != Some(&v) {
                self.endpoints.insert(k, v, 0).map_err(err("endpoints4"))?;
                stats.written += 1;
            }
        }
        for k in have_endpoints.keys() {
            if !want.endpoints.contains_key(&std::net::Ipv4Addr::from(*k)) {
                remove(&mut self.endpoints, k, "endpoints4")?;
                stats.removed += 1;
            }
        }
        lpm_remove_stale(
            &mut self.ipcache,
            &have_ipcache,
            &want_ipcache,
            "ipcache4",
            stats,
        )?;
        lpm_remove_stale(
            &mut self.policy,
            &have_policy,
            &want_policy,
            "policy4",
            stats,
        )?;
        Ok(())
    }

    /// Makes the maps hold exactly `want`, touching only entries that differ. Order keeps the
    /// datapath consistent for packets in flight: backends and Maglev entries are written
    /// before the services that point at them, and services are removed before their backends.
    pub fn sync(&mut self, want: &Desired) -> Result<SyncStats, Error> {
        for (name, max, wanted) in [
            ("lb4_services", abi::LB4_SERVICES_MAX, want.services.len()),
            ("lb4_backends", abi::LB4_BACKENDS_MAX, want.backends.len()),
            ("lb4_maglev", abi::LB4_MAGLEV_MAX, want.maglev.len()),
        ] {
            if wanted > max {
                return Err(Error::Full { name, max, wanted });
            }
        }
        let mut stats = SyncStats::default();
        if let Some(p) = &want.policy {
            self.sync_policy_into(None, p, &mut stats)?;
        }
        if let Some(cfg) = &want.config {
            self.config
                .set(0, cfg.to_bytes(), 0)
                .map_err(|source| Error::Map {
                    name: "node_config",
                    source,
                })?;
        }
        // Backends: write new/changed.
        let have_backends = read_all(&self.backends, "lb4_backends")?;
        for (id, b) in &want.backends {
            let bytes = b.to_bytes();
            if have_backends.get(id) != Some(&bytes) {
                self.backends
                    .insert(id, bytes, 0)
                    .map_err(|source| Error::Map {
                        name: "lb4_backends",
                        source,
                    })?;
                stats.written += 1;
            }
        }
        // Maglev chunks: write new/changed.
        let have_maglev = read_all(&self.maglev, "lb4_maglev")?;
        for (k, v) in &want.maglev {
            let kb = k.to_bytes();
            if have_maglev.get(&kb) != Some(&**v) {
                self.maglev
                    .insert(kb, **v, 0)
                    .map_err(|source| Error::Map {
                        name: "lb4_maglev",
                        source,
                    })?;
                stats.written += 1;
            }
        }
        // Services: backend slots before masters, so a master never counts a missing slot.
        let have_services = read_all(&self.services, "lb4_services")?;
        let mut ordered: Vec<(&Lb4Key, &Lb4Service)> = want.services.iter().collect();
        ordered.sort_by_key(|(k, _)| (k.slot == 0, **k));
        for (k, v) in ordered {
            let kb = k.to_bytes();
            let vb = v.to_bytes();
            if have_services.get(&kb) != Some(&vb) {
                self.services
                    .insert(kb, vb, 0)
                    .map_err(|source| Error::Map {
                        name: "lb4_services",
                        source,
                    })?;
                stats.written += 1;
            }
        }
        // Removals: masters first, then slots, Maglev entries and backends.
        let want_services: std::collections::BTreeSet<[u8; Lb4Key::SIZE]> =
            want.services.keys().map(Lb4Key::to_bytes).collect();
        let mut stale: Vec<[u8; Lb4Key::SIZE]> = have_services
            .keys()
            .filter(|k| !want_services.contains(*k))
            .copied()
            .collect();
        stale.sort_by_key(|k| Lb4Key::from_bytes(k).slot != 0);
        for k in stale {
            remove(&mut self.services, &k, "lb4_services")?;
            stats.removed += 1;
        }
        let want_maglev: std::collections::BTreeSet<[u8; MaglevKey::SIZE]> =
            want.maglev.keys().map(MaglevKey::to_bytes).collect();
        for k in have_maglev.keys().filter(|k| !want_maglev.contains(*k)) {
            remove(&mut self.maglev, k, "lb4_maglev")?;
            stats.removed += 1;
        }
        for id in have_backends
            .keys()
            .filter(|id| !want.backends.contains_key(id))
        {
            remove(&mut self.backends, id, "lb4_backends")?;
            stats.removed += 1;
        }
        Ok(stats)
    }

    /// Turns the programs' flow events on or off (`NODE_F_EVENTS`), leaving the rest of the
    /// node's settings; the agent's next sync writes its own choice again. For benchmarks
    /// that measure flows on and off in one lab.
    pub fn set_events(&mut self, on: bool) -> Result<(), Error> {
        let name = "node_config";
        let mut c = self
            .config
            .get(&0, 0)
            .map_err(|source| Error::Map { name, source })?;
        let at = NodeConfig::FLAGS_AT;
        let mut flags = u32::from_ne_bytes(c[at.clone()].try_into().unwrap_or_default());
        if on {
            flags |= abi::NODE_F_EVENTS;
        } else {
            flags &= !abi::NODE_F_EVENTS;
        }
        c[at].copy_from_slice(&flags.to_ne_bytes());
        self.config
            .set(0, c, 0)
            .map_err(|source| Error::Map { name, source })
    }

    /// The datapath's counters, summed over CPUs, by name (`abi::STAT_NAMES`).
    pub fn stats(&self) -> Result<Vec<(&'static str, u64)>, Error> {
        let mut out = Vec::new();
        for (i, name) in abi::STAT_NAMES.iter().enumerate() {
            let values = self
                .stats
                .get(&(i as u32), 0)
                .map_err(|source| Error::Map {
                    name: "stats",
                    source,
                })?;
            out.push((*name, values.iter().sum()));
        }
        Ok(out)
    }

    /// Number of connection-tracking entries (two per connection).
    pub fn nat_entries(&self) -> usize {
        self.nat.keys().filter(Result::is_ok).count()
    }

    /// The backends map as it is in the kernel, by backend id.
    pub fn backends(&self) -> Result<BTreeMap<u32, Lb4Backend>, Error> {
        Ok(read_all(&self.backends, "lb4_backends")?
            .iter()
            .map(|(id, b)| (*id, Lb4Backend::from_bytes(b)))
            .collect())
    }

    /// The services map as it is in the kernel (for `lab status` and tests).
    pub fn services(&self) -> Result<BTreeMap<Lb4Key, Lb4Service>, Error> {
        Ok(read_all(&self.services, "lb4_services")?
            .iter()
            .map(|(k, v)| (Lb4Key::from_bytes(k), Lb4Service::from_bytes(v)))
            .collect())
    }
}

/// An LPM map's entries: (prefix length, key data) to value.
type LpmEntries<K, V> = BTreeMap<(u32, K), V>;

fn lpm_read<K: aya::Pod + Ord, V: aya::Pod>(
    map: &LpmTrie<MapData, K, V>,
    name: &'static str,
) -> Result<LpmEntries<K, V>, Error> {
    map.iter()
        .map(|r| r.map(|(k, v)| ((k.prefix_len(), k.data()), v)))
        .collect::<Result<_, _>>()
        .map_err(|source| Error::Map { name, source })
}

/// Writes the entries of `want` that `have` lacks or holds otherwise.
fn lpm_write<K: aya::Pod + Ord, V: aya::Pod + PartialEq>(
    map: &mut LpmTrie<MapData, K, V>,
    have: &LpmEntries<K, V>,
    want: &LpmEntries<K, V>,
    name: &'static str,
    stats: &mut SyncStats,
) -> Result<(), Error> {
    for (k, v) in want {
        if have.get(k) != Some(v) {
            map.insert(&LpmKey::new(k.0, k.1), v, 0)
                .map_err(|source| Error::Map { name, source })?;
            stats.written += 1;
        }
    }
    Ok(())
}

/// Removes the entries of `have` that `want` lacks (one already gone is fine).
fn lpm_remove_stale<K: aya::Pod + Ord, V: aya::Pod>(
    map: &mut LpmTrie<MapData, K, V>,
    have: &LpmEntries<K, V>,
    want: &LpmEntries<K, V>,
    name: &'static str,
    stats: &mut SyncStats,
) -> Result<(), Error> {
    for k in have.keys().filter(|k| !want.contains_key(*k)) {
        match map.remove(&LpmKey::new(k.0, k.1)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => stats.removed += 1,
            Err(source) => return Err(Error::Map { name, source }),
        }
    }
    Ok(())
}

type IpcacheBytes = LpmEntries<[u8; 4], [u8; 8]>;
type PolicyBytes = LpmEntries<[u8; PolicyKey::DATA], [u8; PolicyValue::SIZE]>;

/// The ipcache entries of `p` as the map holds them.
fn ipcache_bytes(p: &PolicyDesired) -> IpcacheBytes {
    p.ipcache
        .iter()
        .map(|((addr, len), id)| {
            let mut v = [0u8; 8];
            v[0..4].copy_from_slice(&id.to_ne_bytes());
            ((u32::from(*len), addr.octets()), v)
        })
        .collect()
}

/// The policy entries of `p` as the map holds them.
fn policy_bytes(p: &PolicyDesired) -> PolicyBytes {
    p.entries
        .iter()
        .map(|(k, v)| (k.to_lpm(), v.to_bytes()))
        .collect()
}

fn read_all<K, V>(
    map: &BpfHashMap<MapData, K, V>,
    name: &'static str,
) -> Result<BTreeMap<K, V>, Error>
where
    K: aya::Pod + Ord,
    V: aya::Pod,
{
    map.iter()
        .collect::<Result<BTreeMap<K, V>, _>>()
        .map_err(|source| Error::Map { name, source })
}

fn remove<K: aya::Pod, V: aya::Pod>(
    map: &mut BpfHashMap<MapData, K, V>,
    key: &K,
    name: &'static str,
) -> Result<(), Error> {
    match map.remove(key) {
        Ok(()) => Ok(()),
        // Gone already (an LRU eviction or a concurrent writer): the goal is reached.
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(source) => Err(Error::Map { name, source }),
    }
}

/// One record of the `events` ring buffer (`struct flow_event`): a new service connection, a
/// masquerade decision, or a drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEvent {
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`).
    pub time_ns: u64,
    pub saddr: std::net::Ipv4Addr,
    pub daddr: std::net::Ipv4Addr,
    /// The source port; for ICMP, the message's type.
    pub sport: u16,
    /// The destination port; for ICMP, the message's code.
    pub dport: u16,
    pub proto: u8,
    /// `EVENT_DROP` (1), `EVENT_TRACE` (4) or `EVENT_POLICY_VERDICT` (5), Cilium's monitor
    /// types.
    pub kind: u8,
    pub tcp_flags: u8,
    /// `abi::POINT_*`: the hook that saw the packet.
    pub point: u8,
    pub reason: u32,
    pub ifindex: u32,
    /// Where a new service connection went (backend address and port).
    pub translated: Option<(std::net::Ipv4Addr, u16)>,
    /// Policy drops and verdicts: the rule that decided (`abi::RULE_DEFAULT_DENY`: none
    /// allowed it).
    pub rule: u32,
    /// Policy drops and verdicts: the peer's identity.
    pub identity: u32,
    /// Policy drops and verdicts: Hubble's `policy_match_type` (0 none, 1 L3-only, 2 L3-L4,
    /// 3 L4-only, 4 all, 5 L3-proto, 6 proto-only).
    pub match_type: u16,
}

impl FlowEvent {
    pub const SIZE: usize = 48;

    /// Decodes one record; `None` when it is too short (never from our programs).
    pub fn from_bytes(b: &[u8]) -> Option<FlowEvent> {
        if b.len() < Self::SIZE {
            return None;
        }
        let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let ip_at = |o: usize| std::net::Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]);
        let nat = ip_at(32);
        Some(FlowEvent {
            time_ns: u64::from_ne_bytes(b[0..8].try_into().ok()?),
            saddr: ip_at(8),
            daddr: ip_at(12),
            sport: u16::from_be_bytes([b[16], b[17]]),
            dport: u16::from_be_bytes([b[18], b[19]]),
            proto: b[20],
            kind: b[21],
            tcp_flags: b[22],
            point: b[23],
            reason: u32_at(24),
            ifindex: u32_at(28),
            translated: (!nat.is_unspecified()).then(|| (nat, u16::from_be_bytes([b[36], b[37]]))),
            rule: u32_at(40),
            identity: u32_at(44),
            match_type: u16::from_ne_bytes([b[38], b[39]]),
        })
    }

    /// The record's bytes again, as [`FlowEvent::from_bytes`] reads them.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..8].copy_from_slice(&self.time_ns.to_ne_bytes());
        b[8..12].copy_from_slice(&self.saddr.octets());
        b[12..16].copy_from_slice(&self.daddr.octets());
        b[16..18].copy_from_slice(&self.sport.to_be_bytes());
        b[18..20].copy_from_slice(&self.dport.to_be_bytes());
        b[20] = self.proto;
        b[21] = self.kind;
        b[22] = self.tcp_flags;
        b[23] = self.point;
        b[24..28].copy_from_slice(&self.reason.to_ne_bytes());
        b[28..32].copy_from_slice(&self.ifindex.to_ne_bytes());
        if let Some((addr, port)) = self.translated {
            b[32..36].copy_from_slice(&addr.octets());
            b[36..38].copy_from_slice(&port.to_be_bytes());
        }
        b[38..40].copy_from_slice(&self.match_type.to_ne_bytes());
        b[40..44].copy_from_slice(&self.rule.to_ne_bytes());
        b[44..48].copy_from_slice(&self.identity.to_ne_bytes());
        b
    }
}

/// The reader of a node's `events` ring buffer.
pub struct Events {
    ring: aya::maps::RingBuf<MapData>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Events")
    }
}

impl Events {
    pub fn open(pin_dir: &Path) -> Result<Events, Error> {
        Ok(Events {
            ring: typed!(pin_dir, "events"),
        })
    }

    /// The next record, if one is queued (never waits).
    pub fn next_event(&mut self) -> Option<FlowEvent> {
        let item = self.ring.next()?;
        FlowEvent::from_bytes(&item)
    }

    /// Waits until records are queued or `timeout` passes.
    pub fn wait(&self, timeout: std::time::Duration) {
        use std::os::fd::AsFd as _;
        let fd = nix::poll::PollFd::new(self.ring.as_fd(), nix::poll::PollFlags::POLLIN);
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let _ = nix::poll::poll(&mut [fd], nix::poll::PollTimeout::from(ms));
    }
}

#[cfg(test)]
mod flow_event_tests {
    use super::FlowEvent;

    #[test]
    fn an_event_reads_back_from_its_bytes() {
        for translated in [None, Some(("10.0.0.5".parse().expect("ip"), 8080))] {
            let ev = FlowEvent {
                time_ns: 123_456_789,
                saddr: "10.69.1.2".parse().expect("ip"),
                daddr: "10.69.2.3".parse().expect("ip"),
                sport: 41000,
                dport: 80,
                proto: 6,
                kind: 5,
                tcp_flags: 0x02,
                point: 2,
                reason: 0,
                ifindex: 17,
                translated,
                rule: 3,
                identity: 4242,
                match_type: 2,
            };
            assert_eq!(FlowEvent::from_bytes(&ev.to_bytes()), Some(ev));
        }
    }
}
