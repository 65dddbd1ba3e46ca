//! The guest's network: loopback, and the NICs that stand for the host
//! interfaces of the container's network namespace, given those
//! interfaces' names, MTUs, addresses and routes (over rtnetlink).

use std::net::IpAddr;
use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressHeaderFlags;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use runvm_protocol::{AgentError, AgentErrorKind, ConfigureNetwork, Route};

use crate::process::{fail, AgentResult};

/// How long a NIC may take to appear: one hotplugged into a VM restored
/// from a template is enumerated a moment after the request can arrive.
const NIC_WAIT: Duration = Duration::from_secs(10);

fn invalid(message: String) -> AgentError {
    AgentError::new(AgentErrorKind::InvalidArgument, message)
}

/// `address/prefix`, the prefix within the family's length.
pub fn parse_cidr(s: &str) -> AgentResult<(IpAddr, u8)> {
    let bad = || invalid(format!("{s:?} is not an address/prefix"));
    let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(bad());
    }
    Ok((addr, prefix))
}

pub fn parse_mac(s: &str) -> AgentResult<Vec<u8>> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| invalid(format!("{s:?} is not a MAC address")))?;
    if bytes.len() != 6 {
        return Err(invalid(format!("{s:?} is not a MAC address")));
    }
    Ok(bytes)
}

fn connection() -> AgentResult<Handle> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| fail("open a netlink socket", e))?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn links(handle: &Handle) -> AgentResult<Vec<LinkMessage>> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| fail("list network interfaces", e))
}

fn has_mac(link: &LinkMessage, mac: &[u8]) -> bool {
    link.attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::Address(m) if m == mac))
}

/// Bring `lo` up (the kernel leaves it down). Two ioctls rather than
/// rtnetlink: a VM without NICs never needs the netlink code otherwise, and
/// under TCG its first run was the largest step of the agent's start
/// (about 20 ms of a cold create end to end, docs/performance.md).
pub fn loopback_up() -> AgentResult<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| fail("bring lo up: socket", e))?;
    // SAFETY: ifreq is plain data, for which all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name in `req` and writes
    // its flags member; `req` outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(fail("find lo", std::io::Error::last_os_error()));
    }
    // SAFETY: the flags member is the one SIOCGIFFLAGS has just written.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS only reads `req`, which outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(fail("bring lo up", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Give each NIC its host interface's identity, then add the routes.
pub async fn configure(req: ConfigureNetwork) -> AgentResult<()> {
    // Everything is checked before anything changes.
    let mut nics = Vec::new();
    for i in &req.interfaces {
        let addresses = i
            .addresses
            .iter()
            .map(|a| parse_cidr(a))
            .collect::<AgentResult<Vec<_>>>()?;
        nics.push((i, parse_mac(&i.mac)?, addresses));
    }
    for r in &req.routes {
        if !req.interfaces.iter().any(|i| i.name == r.device) {
            return Err(invalid(format!(
                "route {} names interface {}, which is not one of the NICs",
                describe(r),
                r.device
            )));
        }
    }
    let handle = connection()?;
    // Find every NIC first: the device that will be eth0 may be the kernel's
    // eth1 now, so names are only given once each is known.
    let deadline = tokio::time::Instant::now() + NIC_WAIT;
    let mut indexes = Vec::new();
    for (i, mac, _) in &nics {
        let index = loop {
            if let Some(l) = links(&handle).await?.iter().find(|l| has_mac(l, mac)) {
                break l.header.index;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(invalid(format!(
                    "no network interface with MAC {} appeared in the VM within {} s",
                    i.mac,
                    NIC_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        indexes.push(index);
    }
    let set = |what: &'static str, name: &str| {
        let name = name.to_string();
        move |e: rtnetlink::Error| fail(&format!("{what} of {name}"), e)
    };
    // Down, and out of the way of each other's names.
    for (n, index) in indexes.iter().enumerate() {
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(*index)
                    .down()
                    .name(format!("rvnic{n}"))
                    .build(),
            )
            .execute()
            .await
            .map_err(set("rename", &nics[n].0.name))?;
    }
    for ((i, _, addresses), index) in nics.iter().zip(&indexes) {
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(*index)
                    .name(i.name.clone())
                    .mtu(i.mtu)
                    .build(),
            )
            .execute()
            .await
            .map_err(set("set the name and MTU", &i.name))?;
        for (addr, prefix) in addresses {
            let mut add = handle.address().add(*index, *addr, *prefix);
            if addr.is_ipv6() {
                // Unique already in the host's namespace: usable at once.
                add.message_mut().header.flags |= AddressHeaderFlags::Nodad;
            }
            add.execute()
                .await
                .map_err(|e| fail(&format!("add {addr}/{prefix} to {}", i.name), e))?;
        }
        handle
            .link()
            .set(LinkUnspec::new_with_index(*index).up().build())
            .execute()
            .await
            .map_err(set("bring up", &i.name))?;
    }
    for r in &req.routes {
        let index = req
            .interfaces
            .iter()
            .position(|i| i.name == r.device)
            .map(|n| indexes[n])
            .expect("checked above");
        let message = route_message(r, index)?;
        handle
            .route()
            .add(message)
            .execute()
            .await
            .map_err(|e| fail(&format!("add route {}", describe(r)), e))?;
    }
    Ok(())
}

fn describe(r: &Route) -> String {
    let mut s = r.destination.clone().unwrap_or_else(|| "default".into());
    if let Some(g) = &r.gateway {
        s.push_str(&format!(" via {g}"));
    }
    s.push_str(&format!(" dev {}", r.device));
    s
}

fn route_message(
    r: &Route,
    index: u32,
) -> AgentResult<rtnetlink::packet_route::route::RouteMessage> {
    fn bad(r: &Route) -> impl FnOnce(&dyn std::fmt::Display) -> AgentError + '_ {
        move |e| invalid(format!("route {}: {e}", describe(r)))
    }
    let mut b = RouteMessageBuilder::<IpAddr>::new();
    let gateway: Option<IpAddr> = match &r.gateway {
        Some(g) => Some(
            g.parse()
                .map_err(|_| invalid(format!("route {}: bad gateway", describe(r))))?,
        ),
        None => None,
    };
    let family = match (gateway, &r.destination) {
        (Some(IpAddr::V6(_)), _) => AddressFamily::Inet6,
        (None, Some(d)) if parse_cidr(d)?.0.is_ipv6() => AddressFamily::Inet6,
        _ => AddressFamily::Inet,
    };
    b.get_mut().header.address_family = family;
    match &r.destination {
        Some(d) => {
            let (addr, prefix) = parse_cidr(d)?;
            b = b.destination_prefix(addr, prefix).map_err(|e| bad(r)(&e))?;
        }
        None if gateway.is_none() => {
            return Err(invalid(format!(
                "route {}: a default route needs a gateway",
                describe(r)
            )))
        }
        None => {}
    }
    if let Some(g) = gateway {
        b = b.gateway(g).map_err(|e| bad(r)(&e))?;
    }
    b = b.output_interface(index);
    if r.scope_link {
        b = b.scope(RouteScope::Link);
    }
    if let Some(m) = r.metric {
        b = b.priority(m);
    }
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};

    #[test]
    fn addresses_and_macs_are_checked() {
        assert_eq!(
            parse_cidr("10.0.0.2/24").unwrap(),
            ("10.0.0.2".parse().unwrap(), 24)
        );
        assert_eq!(parse_cidr("fd00::5/64").unwrap().1, 64);
        for bad in ["10.0.0.2", "10.0.0.2/33", "fd00::5/129", "x/8"] {
            assert_eq!(
                parse_cidr(bad).unwrap_err().kind,
                AgentErrorKind::InvalidArgument
            );
        }
        assert_eq!(
            parse_mac("02:42:0A:00:00:02").unwrap(),
            vec![2, 0x42, 10, 0, 0, 2]
        );
        assert!(parse_mac("02:42:0a:00:00").is_err());
    }

    fn route(destination: Option<&str>, gateway: Option<&str>) -> Route {
        Route {
            destination: destination.map(str::to_string),
            gateway: gateway.map(str::to_string),
            device: "eth0".into(),
            scope_link: gateway.is_none(),
            metric: Some(100),
        }
    }

    #[test]
    fn a_default_route_takes_the_gateways_family() {
        let m = route_message(&route(None, Some("fd00::1")), 3).unwrap();
        assert_eq!(m.header.address_family, AddressFamily::Inet6);
        assert_eq!(m.header.destination_prefix_length, 0);
        assert!(m.attributes.contains(&RouteAttribute::Oif(3)));
        assert!(m.attributes.contains(&RouteAttribute::Priority(100)));
        let m = route_message(&route(Some("10.9.0.0/16"), None), 3).unwrap();
        assert_eq!(m.header.scope, RouteScope::Link);
        assert!(m
            .attributes
            .contains(&RouteAttribute::Destination(RouteAddress::Inet(
                "10.9.0.0".parse().unwrap()
            ))));
        assert!(route_message(&route(None, None), 3).is_err());
    }
}
