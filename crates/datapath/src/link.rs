//! The node's links as the L2 announcer uses them: addresses and link state through netlink
//! (rtnetlink), and a gratuitous ARP through an AF_PACKET socket, in the network namespace
//! the [`Netlink`] was opened in. Every call is bounded by [`NETLINK_TIMEOUT`].

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures::TryStreamExt as _;
use netlink_packet_route::address::{AddressAttribute, CacheInfo};
use netlink_packet_route::link::LinkFlags;

/// The longest one netlink request may take.
pub const NETLINK_TIMEOUT: Duration = Duration::from_secs(2);

/// A netlink connection of the namespace it was opened in (the calling thread's then). Its
/// requests are made from whichever thread holds it, one at a time.
pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Netlink")
    }
}

fn other(what: String) -> impl FnOnce(rtnetlink::Error) -> io::Error {
    move |e| io::Error::other(format!("{what}: {e}"))
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(conn);
            Ok::<_, io::Error>(handle)
        })?;
        Ok(Netlink { rt, handle })
    }

    /// Runs one request within [`NETLINK_TIMEOUT`].
    fn run<T>(&self, what: &str, f: impl Future<Output = io::Result<T>>) -> io::Result<T> {
        self.rt
            .block_on(async { tokio::time::timeout(NETLINK_TIMEOUT, f).await })
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what}: no netlink answer within {NETLINK_TIMEOUT:?}"),
                )
            })?
    }

    /// The interface's index and whether it is up with a carrier (UP and LOWER_UP).
    fn link(&self, interface: &str) -> io::Result<(u32, bool)> {
        let h = self.handle.clone();
        self.run(&format!("link {interface}"), async move {
            let msg = h
                .link()
                .get()
                .match_name(interface.to_string())
                .execute()
                .try_next()
                .await
                .map_err(other(format!("link {interface}")))?
                .ok_or_else(|| io::Error::other(format!("no link {interface}")))?;
            let flags = msg.header.flags;
            Ok((
                msg.header.index,
                flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp),
            ))
        })
    }

    /// Whether the interface is up and has a carrier (false when it is not there).
    pub fn link_is_up(&self, interface: &str) -> bool {
        self.link(interface).is_ok_and(|(_, up)| up)
    }

    /// Adds `addr/32` on the interface, or refreshes its lifetime: valid and preferred for
    /// `lifetime` (so an address whose holder stops renewing goes by itself).
    pub fn set_address(
        &self,
        interface: &str,
        addr: Ipv4Addr,
        lifetime: Duration,
    ) -> io::Result<()> {
        let (index, _) = self.link(interface)?;
        let secs = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
        let h = self.handle.clone();
        self.run(&format!("adding {addr} to {interface}"), async move {
            let mut req = h.address().add(index, IpAddr::V4(addr), 32).replace();
            let mut lifetimes = CacheInfo::default();
            lifetimes.ifa_preferred = secs;
            lifetimes.ifa_valid = secs;
            req.message_mut()
                .attributes
                .push(AddressAttribute::CacheInfo(lifetimes));
            req.execute()
                .await
                .map_err(other(format!("adding {addr}/32 to {interface}")))
        })
    }

    /// Removes `addr/32` from the interface (nothing to do when it is not there).
    pub fn remove_address(&self, interface: &str, addr: Ipv4Addr) -> io::Result<()> {
        let (index, _) = self.link(interface)?;
        let h = self.handle.clone();
        self.run(&format!("removing {addr} from {interface}"), async move {
            let found: Vec<_> = h
                .address()
                .get()
                .set_link_index_filter(index)
                .set_address_filter(IpAddr::V4(addr))
                .set_prefix_length_filter(32)
                .execute()
                .try_collect()
                .await
                .map_err(other(format!("listing the addresses of {interface}")))?;
            for msg in found {
                h.address()
                    .del(msg)
                    .execute()
                    .await
                    .map_err(other(format!("removing {addr}/32 from {interface}")))?;
            }
            Ok(())
        })
    }

    /// The interface's IPv4 addresses.
    pub fn addresses(&self, interface: &str) -> io::Result<Vec<Ipv4Addr>> {
        let (index, _) = self.link(interface)?;
        let h = self.handle.clone();
        self.run(&format!("addresses of {interface}"), async move {
            let msgs: Vec<_> = h
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
                .try_collect()
                .await
                .map_err(other(format!("listing the addresses of {interface}")))?;
            Ok(msgs
                .iter()
                .flat_map(|m| m.attributes.iter())
                .filter_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(a)) => Some(*a),
                    _ => None,
                })
                .collect())
        })
    }
}

/// The gratuitous ARP frame for `addr` from `mac`: a broadcast ARP request whose sender and
/// target address are both `addr` (RFC 5227's announcement).
pub fn gratuitous_arp_frame(mac: [u8; 6], addr: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&addr.octets());
    f[32..38].copy_from_slice(&[0; 6]);
    f[38..42].copy_from_slice(&addr.octets());
    f
}

/// Sends one gratuitous ARP for `addr` out of `interface` through an AF_PACKET socket (of the
/// calling thread's network namespace).
pub fn gratuitous_arp(interface: &str, addr: Ipv4Addr) -> io::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, sendto, socket};
    // The interface's link-layer address from getifaddrs: it carries the ifindex the send
    // needs, and the MAC for the frame.
    let link = nix::ifaddrs::getifaddrs()
        .map_err(io::Error::from)?
        .filter(|i| i.interface_name == interface)
        .find_map(|i| i.address.and_then(|a| a.as_link_addr().copied()))
        .ok_or_else(|| io::Error::other(format!("no link address for {interface}")))?;
    let mac = link.addr().ok_or_else(|| io::Error::other("no MAC"))?;
    let fd = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::EthAll,
    )
    .map_err(io::Error::from)?;
    let frame = gratuitous_arp_frame(mac, addr);
    sendto(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &frame,
        &link,
        nix::sys::socket::MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_arp_frame_layout() {
        let f = gratuitous_arp_frame([2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 10, 30, 25));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[28..32], &[10, 10, 30, 25]);
        assert_eq!(&f[38..42], &[10, 10, 30, 25]);
    }
}
