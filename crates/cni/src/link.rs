//! The kernel side: the veth pair, addresses, routes and sysctls, over rtnetlink.
//!
//! Every netlink conversation runs on a short-lived thread of its own with a current-thread
//! tokio runtime. For the container side that thread first joins the pod's network namespace
//! (`setns(2)` affects only the calling thread), so the netlink socket it opens talks to the
//! pod's kernel tables while the rest of the process stays in the node's.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope,
};
use nix::sched::CloneFlags;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::error::Error;

/// The pod's next hop: a link-local address nobody owns; the host veth answers ARP for it
/// (proxy ARP), as in Calico.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

const ENODEV: i32 = nix::errno::Errno::ENODEV as i32;
const ENOENT: i32 = nix::errno::Errno::ENOENT as i32;
const ESRCH: i32 = nix::errno::Errno::ESRCH as i32;
const EEXIST: i32 = nix::errno::Errno::EEXIST as i32;
const ENETUNREACH: i32 = nix::errno::Errno::ENETUNREACH as i32;
const EHOSTUNREACH: i32 = nix::errno::Errno::EHOSTUNREACH as i32;

/// A link as the result reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub index: u32,
    pub mac: String,
    pub up: bool,
    pub mtu: u32,
}

/// Runs `f` with a netlink handle in `netns` (the caller's own namespace when `None`).
pub fn with_netlink<T: Send>(
    netns: Option<&File>,
    f: impl AsyncFnOnce(Handle) -> Result<T, Error> + Send,
) -> Result<T, Error> {
    std::thread::scope(|s| {
        s.spawn(move || {
            if let Some(ns) = netns {
                nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                    Error::io("entering the container's network namespace", e.into())
                })?;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| Error::io("starting the netlink runtime", e))?;
            rt.block_on(async move {
                let (conn, handle, _) = rtnetlink::new_connection()
                    .map_err(|e| Error::io("opening a netlink socket", e))?;
                tokio::spawn(conn);
                f(handle).await
            })
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::io(
                "netlink worker thread",
                std::io::Error::other("panicked"),
            ))
        })
    })
}

fn mac_string(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn link_info(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        name: String::new(),
        index: msg.header.index,
        mac: String::new(),
        up: msg.header.flags.contains(LinkFlags::Up),
        mtu: 0,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => info.name.clone_from(n),
            LinkAttribute::Address(a) => info.mac = mac_string(a),
            LinkAttribute::Mtu(m) => info.mtu = *m,
            _ => {}
        }
    }
    info
}

/// The link called `name`, or `None` when there is none.
pub async fn get_link(h: &Handle, name: &str) -> Result<Option<LinkInfo>, Error> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(Some(msg)) => Ok(Some(link_info(&msg))),
        Ok(None) => Ok(None),
        Err(e) => {
            let err = Error::netlink(format!("looking up link {name}"), e);
            match err.errno() {
                Some(ENODEV) => Ok(None),
                _ => Err(err),
            }
        }
    }
}

/// Creates the veth pair with its container end born inside `netns` under its final name, so
/// the name never has to be free in the node's namespace.
pub async fn create_veth(
    h: &Handle,
    host_ifname: &str,
    ifname: &str,
    netns: &File,
    mtu: u32,
) -> Result<(), Error> {
    let peer = LinkUnspec::new_with_name(ifname)
        .mtu(mtu)
        .setns_by_fd(netns.as_raw_fd())
        .build();
    let msg = LinkVeth::new(host_ifname, ifname)
        .mtu(mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    h.link().add(msg).execute().await.map_err(|e| {
        Error::netlink(
            format!("creating veth pair {host_ifname} / container {ifname}"),
            e,
        )
    })
}

pub async fn set_up(h: &Handle, index: u32, name: &str) -> Result<(), Error> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("bringing {name} up"), e))
}

/// Deletes the link called `name`; a link that is already gone is fine.
pub async fn delete_link(h: &Handle, name: &str) -> Result<bool, Error> {
    let Some(link) = get_link(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(link.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) => {
            let err = Error::netlink(format!("deleting link {name}"), e);
            match err.errno() {
                Some(ENODEV) => Ok(false),
                _ => Err(err),
            }
        }
    }
}

/// `ip address add ADDR dev INDEX`; an address already there is fine.
pub async fn add_address(h: &Handle, index: u32, addr: Ipv4Net, name: &str) -> Result<(), Error> {
    match h
        .address()
        .add(index, IpAddr::V4(addr.addr()), addr.prefix_len())
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) => {
            let err = Error::netlink(format!("adding address {addr} to {name}"), e);
            match err.errno() {
                Some(EEXIST) => Ok(()),
                _ => Err(err),
            }
        }
    }
}

/// The IPv4 addresses on link `index`.
pub async fn addresses(h: &Handle, index: u32) -> Result<Vec<Ipv4Net>, Error> {
    let mut stream = h.address().get().set_link_index_filter(index).execute();
    let mut out = Vec::new();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(|e| Error::netlink("listing addresses", e))?
    {
        if msg.header.index != index {
            continue;
        }
        for attr in &msg.attributes {
            if let AddressAttribute::Local(IpAddr::V4(a)) | AddressAttribute::Address(IpAddr::V4(a)) =
                attr
                && let Ok(net) = Ipv4Net::new(*a, msg.header.prefix_len)
                && !out.contains(&net)
            {
                out.push(net);
            }
        }
    }
    Ok(out)
}

/// A route in the main table, as CHECK compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

/// `ip route add DST [via GW] dev INDEX [scope link]` in the main table; an identical route
/// already there is fine.
pub async fn add_route(
    h: &Handle,
    dst: Ipv4Net,
    gateway: Option<Ipv4Addr>,
    index: u32,
    what: &str,
) -> Result<(), Error> {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .output_interface(index);
    b = match gateway {
        Some(gw) => b.gateway(gw),
        None => b.scope(RouteScope::Link),
    };
    match h.route().add(b.build()).execute().await {
        Ok(()) => Ok(()),
        Err(e) => {
            let err = Error::netlink(format!("adding route {what}"), e);
            match err.errno() {
                Some(EEXIST) => Ok(()),
                _ => Err(err),
            }
        }
    }
}

/// Moves the IPv4 default route of the main table to `via GW dev INDEX` (`onlink`: the
/// gateway need not be on a connected route of the main table, which sbr empties): every
/// other default route is deleted.
pub async fn move_default_route(
    h: &Handle,
    gw: Ipv4Addr,
    index: u32,
    what: &str,
) -> Result<(), Error> {
    let defaults = main_table(h)
        .await?
        .into_iter()
        .filter(|m| m.header.destination_prefix_length == 0);
    for msg in defaults {
        h.route()
            .del(msg)
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("deleting a default route for {what}"), e))?;
    }
    let mut msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gw)
        .output_interface(index)
        .build();
    msg.header
        .flags
        .insert(netlink_packet_route::route::RouteFlags::Onlink);
    h.route()
        .add(msg)
        .replace()
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("adding {what}"), e))
}

/// The IPv4 route messages of the main table (the table attribute wins over the header's,
/// which holds only 8 bits).
async fn main_table(h: &Handle) -> Result<Vec<RouteMessage>, Error> {
    let mut stream = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut out = Vec::new();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(|e| Error::netlink("listing routes", e))?
    {
        let table = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(msg.header.table));
        if table == u32::from(RouteHeader::RT_TABLE_MAIN) {
            out.push(msg);
        }
    }
    Ok(out)
}

/// The IPv4 routes of the main table.
pub async fn main_routes(h: &Handle) -> Result<Vec<RouteEntry>, Error> {
    let mut out = Vec::new();
    for msg in main_table(h).await? {
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let mut gateway = None;
        let mut oif = None;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        if let Ok(dst) = Ipv4Net::new(dst, msg.header.destination_prefix_length) {
            out.push(RouteEntry { dst, gateway, oif });
        }
    }
    Ok(out)
}

/// Whether the caller's namespace can route to `dst` (`ip route get DST`).
pub async fn has_route_to(h: &Handle, dst: Ipv4Addr) -> Result<bool, Error> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst, 32)
        .build();
    match h.route().get(msg).execute().try_next().await {
        Ok(found) => Ok(found.is_some()),
        Err(e) => {
            let err = Error::netlink(format!("looking up the route to {dst}"), e);
            match err.errno() {
                Some(ENETUNREACH) | Some(EHOSTUNREACH) => Ok(false),
                _ => Err(err),
            }
        }
    }
}

/// Writes one `net.ipv4.conf.<ifname>.<key>` sysctl of the caller's namespace.
pub fn set_ipv4_conf(ifname: &str, key: &str, value: &str) -> Result<(), Error> {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/{key}");
    std::fs::write(&path, value).map_err(|e| Error::io(format!("writing {path}"), e))
}

/// Whether an error from opening a namespace path means "it is gone".
pub fn is_gone(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(ENOENT) | Some(ESRCH))
}

/// `dst` of a result route as IPv4, if it is one.
pub fn v4(net: &IpNet) -> Option<Ipv4Net> {
    match net {
        IpNet::V4(n) => Some(*n),
        IpNet::V6(_) => None,
    }
}
