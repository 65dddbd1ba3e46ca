//! Reading a network namespace and joining taps to its interfaces, over
//! rtnetlink (the namespace is the calling thread's).

use std::net::IpAddr;
use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkLayerType, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::tc::TcHandle;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use runvm_protocol::Route;

use super::{HostInterface, NetworkError, Nic, TAP_PREFIX};

/// `ETH_P_ALL`: a filter for every protocol, in network byte order as tc
/// keeps it.
const ETH_P_ALL: u16 = 0x0003u16.to_be();
/// The main routing table.
const RT_TABLE_MAIN: u32 = 254;
/// How long a tap the VMM creates may take to appear.
const TAP_WAIT: Duration = Duration::from_secs(5);

pub(super) struct Found {
    pub interfaces: Vec<HostInterface>,
    pub routes: Vec<Route>,
    /// The names of taps already there (other VMs' in the namespace).
    pub taps: Vec<String>,
}

pub(super) struct Netlink {
    handle: Handle,
}

fn read(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    move |source| NetworkError::Read {
        what,
        source: Box::new(source),
    }
}

impl Netlink {
    /// A connection in the current namespace, driven on the current runtime.
    pub fn open() -> Result<Netlink, NetworkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Socket)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    async fn links(&self) -> Result<Vec<LinkMessage>, NetworkError> {
        self.handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(read("interfaces"))
    }

    /// Every Ethernet interface but runvm's own taps, with its addresses,
    /// and the routes through them.
    pub async fn read(&self) -> Result<Found, NetworkError> {
        let mut interfaces = Vec::new();
        let mut taps = Vec::new();
        for link in self.links().await? {
            if link.header.link_layer_type != LinkLayerType::Ether {
                continue;
            }
            let name = link_name(&link);
            if name.starts_with(TAP_PREFIX) {
                taps.push(name);
                continue;
            }
            let mac = link
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::Address(m) if m.len() == 6 => Some(format_mac(m)),
                    _ => None,
                })
                .ok_or_else(|| NetworkError::NoMac { name: name.clone() })?;
            let mtu = link
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::Mtu(m) => Some(*m),
                    _ => None,
                })
                .unwrap_or(1500);
            interfaces.push(HostInterface {
                index: link.header.index,
                name,
                mac,
                mtu,
                addresses: Vec::new(),
            });
        }
        let addresses: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(read("addresses"))?;
        for a in addresses {
            let Some(iface) = interfaces.iter_mut().find(|i| i.index == a.header.index) else {
                continue;
            };
            if let Some(ip) = address_of(&a) {
                // The guest makes its own link-local address, from the
                // same MAC.
                if !is_link_local(&ip) {
                    iface.addresses.push((ip, a.header.prefix_len));
                }
            }
        }
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = RouteMessageBuilder::<IpAddr>::new().build();
            query.header.address_family = family;
            let found: Vec<RouteMessage> = self
                .handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(read("routes"))?;
            routes.extend(found.iter().filter_map(|r| route_of(r, &interfaces)));
        }
        // Routes on the link first: a gateway must be reachable when the
        // route through it is added.
        routes.sort_by_key(|r| !r.scope_link);
        Ok(Found {
            interfaces,
            routes,
            taps,
        })
    }

    async fn index_of(&self, name: &str) -> Result<Option<u32>, NetworkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link.map(|l| l.header.index)),
            // ENODEV: not (yet) there.
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.map(|c| c.get()) == Some(-libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(source) => Err(NetworkError::Read {
                what: "interfaces",
                source: Box::new(source),
            }),
        }
    }

    /// Bring the VM's tap up with the interface's MTU and redirect each
    /// one's ingress to the other's egress. `changed` is set once the
    /// caller's interface has been changed (its ingress qdisc added).
    pub async fn connect(&self, nic: &Nic, changed: &mut bool) -> Result<(), NetworkError> {
        let deadline = tokio::time::Instant::now() + TAP_WAIT;
        let tap = loop {
            if let Some(i) = self.index_of(&nic.tap).await? {
                break i;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NetworkError::NoTap {
                    tap: nic.tap.clone(),
                    interface: nic.host.name.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let host = nic.host.index;
        let step = |step| {
            move |source| NetworkError::Connect {
                interface: nic.host.name.clone(),
                tap: nic.tap.clone(),
                step,
                source: Box::new(source),
            }
        };
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(tap)
                    .mtu(nic.host.mtu)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(step("bring the tap up"))?;
        for (from, to, what) in [
            (host, tap, "redirect the interface to the tap"),
            (tap, host, "redirect the tap to the interface"),
        ] {
            match self
                .handle
                .qdisc()
                .add(from as i32)
                .ingress()
                .execute()
                .await
            {
                Ok(()) => *changed |= from == host,
                // Only one ingress qdisc per interface: another VM's.
                Err(rtnetlink::Error::NetlinkError(e))
                    if from == host && e.code.map(|c| -c.get()) == Some(libc::EEXIST) =>
                {
                    return Err(NetworkError::InUse {
                        interface: nic.host.name.clone(),
                    })
                }
                Err(e) => return Err(step("add an ingress qdisc")(e)),
            }
            self.handle
                .traffic_filter(from as i32)
                .add()
                .parent(u32::from(TcHandle::INGRESS))
                .protocol(ETH_P_ALL)
                .redirect(to)
                .map_err(step(what))?
                .execute()
                .await
                .map_err(step(what))?;
        }
        Ok(())
    }

    /// Remove the ingress qdisc (and with it the redirect) from the
    /// caller's interface.
    pub async fn disconnect(&self, nic: &Nic) -> Result<(), NetworkError> {
        let mut del = self.handle.qdisc().del(nic.host.index as i32);
        del.message_mut().header.parent = TcHandle::INGRESS;
        del.message_mut().header.handle = TcHandle::from(0xffff_0000);
        match del.execute().await {
            Ok(()) => Ok(()),
            // Gone with the interface, or never added.
            Err(rtnetlink::Error::NetlinkError(e))
                if matches!(
                    e.code.map(|c| -c.get()),
                    Some(libc::ENODEV | libc::ENOENT | libc::EINVAL)
                ) =>
            {
                Ok(())
            }
            Err(source) => Err(NetworkError::Connect {
                interface: nic.host.name.clone(),
                tap: nic.tap.clone(),
                step: "remove the ingress qdisc",
                source: Box::new(source),
            }),
        }
    }
}

fn link_name(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn format_mac(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn address_of(a: &AddressMessage) -> Option<IpAddr> {
    // IFA_LOCAL is the interface's own address on point-to-point links,
    // where IFA_ADDRESS is the peer's.
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn route_address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A route of the main table the guest must be told of: not one the kernel
/// makes by itself for an address, not multicast or link-local.
fn route_of(r: &RouteMessage, interfaces: &[HostInterface]) -> Option<Route> {
    let h = &r.header;
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(h.table as u32);
    if table != RT_TABLE_MAIN || h.kind != RouteType::Unicast || h.protocol == RouteProtocol::Kernel
    {
        return None;
    }
    let mut destination = None;
    let (mut gateway, mut oif, mut metric) = (None, None, None);
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => destination = route_address(d),
            RouteAttribute::Gateway(g) => gateway = route_address(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = Some(*p),
            _ => {}
        }
    }
    let device = interfaces.iter().find(|i| Some(i.index) == oif)?;
    if let Some(d) = destination {
        if is_link_local(&d) || d.is_multicast() {
            return None;
        }
    }
    // The kernel's metric for IPv6 routes is 1024 by default; leave the
    // guest's kernel to pick its own default.
    if h.address_family == AddressFamily::Inet6 && metric == Some(1024) {
        metric = None;
    }
    Some(Route {
        destination: destination
            .filter(|_| h.destination_prefix_length > 0)
            .map(|d| format!("{d}/{}", h.destination_prefix_length)),
        gateway: gateway.map(|g| g.to_string()),
        device: device.name.clone(),
        scope_link: h.scope == RouteScope::Link,
        metric,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth0() -> Vec<HostInterface> {
        vec![HostInterface {
            index: 7,
            name: "eth0".into(),
            mac: "02:00:00:00:00:01".into(),
            mtu: 1500,
            addresses: vec![],
        }]
    }

    fn route(protocol: RouteProtocol, attrs: Vec<RouteAttribute>, prefix: u8) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.header.table = 254;
        r.header.kind = RouteType::Unicast;
        r.header.protocol = protocol;
        r.header.destination_prefix_length = prefix;
        r.attributes = attrs;
        r
    }

    #[test]
    fn the_default_route_is_kept_and_kernel_routes_are_not() {
        let default = route(
            RouteProtocol::Boot,
            vec![
                RouteAttribute::Gateway(RouteAddress::Inet("10.88.0.1".parse().unwrap())),
                RouteAttribute::Oif(7),
            ],
            0,
        );
        assert_eq!(
            route_of(&default, &eth0()),
            Some(Route {
                destination: None,
                gateway: Some("10.88.0.1".into()),
                device: "eth0".into(),
                scope_link: false,
                metric: None,
            })
        );
        let connected = route(
            RouteProtocol::Kernel,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet("10.88.0.0".parse().unwrap())),
                RouteAttribute::Oif(7),
            ],
            16,
        );
        assert_eq!(route_of(&connected, &eth0()), None);
        let elsewhere = route(RouteProtocol::Boot, vec![RouteAttribute::Oif(9)], 0);
        assert_eq!(route_of(&elsewhere, &eth0()), None);
    }

    #[test]
    fn macs_are_lowercase_hex_pairs() {
        assert_eq!(
            format_mac(&[2, 0x42, 0xac, 0x11, 0, 2]),
            "02:42:ac:11:00:02"
        );
    }
}
