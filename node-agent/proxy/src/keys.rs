//! Keys of the sync engine's state and how they are encoded in map entries.

use std::fmt;
use std::net::Ipv4Addr;

use coxswain_ebpf_common::{BackendV4, RevNatV4, ServiceKeyV4, proto, scope};

/// IP protocol of a Service port or endpoint port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (the Kubernetes default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Parses a Kubernetes `protocol` field; absent means TCP.
    pub fn parse(field: Option<&str>) -> Option<Self> {
        match field {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            Some(_) => None,
        }
    }

    /// The IP protocol number stored in map keys ([`coxswain_ebpf_common::proto`]).
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => proto::TCP,
            Protocol::Udp => proto::UDP,
            Protocol::Sctp => proto::SCTP,
        }
    }

    /// Decodes a protocol number read from a map.
    pub const fn from_number(number: u8) -> Option<Self> {
        match number {
            proto::TCP => Some(Protocol::Tcp),
            proto::UDP => Some(Protocol::Udp),
            proto::SCTP => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The Kubernetes spelling: `TCP`, `UDP`, `SCTP`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which traffic a master entry serves ([`coxswain_ebpf_common::scope`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Traffic from anywhere; every usable endpoint (or, for a ClusterIP
    /// under `internalTrafficPolicy: Local`, the local ones).
    All,
    /// Traffic from outside the node under `externalTrafficPolicy: Local`:
    /// node-local endpoints only.
    Local,
}

impl Scope {
    /// The value stored in [`ServiceKeyV4::scope`].
    pub const fn raw(self) -> u8 {
        match self {
            Scope::All => scope::ALL,
            Scope::Local => scope::LOCAL,
        }
    }

    /// Decodes a scope read from a map.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            scope::ALL => Some(Scope::All),
            scope::LOCAL => Some(Scope::Local),
            _ => None,
        }
    }

    /// `all` or `local`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::All => "all",
            Scope::Local => "local",
        }
    }
}

/// One Service address and port: what clients connect to. Owns one service
/// id, which is also its reverse-NAT id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct FrontendKey {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

impl FrontendKey {
    /// The reverse-NAT entry of this frontend.
    pub fn rev_nat(&self) -> RevNatV4 {
        RevNatV4 {
            addr: addr_to_map(self.addr),
            port: port_to_map(self.port),
            pad: 0,
        }
    }
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.protocol)
    }
}

/// A frontend in one scope: the key of one master entry and its slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct MasterKey {
    pub frontend: FrontendKey,
    pub scope: Scope,
}

impl MasterKey {
    /// The service map key of slot `slot` (0: the master entry).
    pub fn entry(&self, slot: u16) -> ServiceKeyV4 {
        ServiceKeyV4 {
            addr: addr_to_map(self.frontend.addr),
            port: port_to_map(self.frontend.port),
            slot,
            proto: self.frontend.protocol.number(),
            scope: self.scope.raw(),
            pad: [0; 2],
        }
    }

    /// Decodes a service map key into its master key and slot; `None` for a
    /// key this engine never writes (unknown protocol or scope, non-zero
    /// padding).
    pub fn from_entry(key: &ServiceKeyV4) -> Option<(MasterKey, u16)> {
        if key.pad != [0; 2] {
            return None;
        }
        let master = MasterKey {
            frontend: FrontendKey {
                addr: addr_from_map(key.addr),
                port: port_from_map(key.port),
                protocol: Protocol::from_number(key.proto)?,
            },
            scope: Scope::from_raw(key.scope)?,
        };
        Some((master, key.slot))
    }
}

impl fmt::Display for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} scope {}", self.frontend, self.scope.as_str())
    }
}

/// One endpoint address and target port: owns one backend id, shared by
/// every Service slot that names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct BackendKey {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

impl BackendKey {
    /// The backend map value with `flags` ([`coxswain_ebpf_common::backend_flags`]).
    pub fn value(&self, flags: u8) -> BackendV4 {
        BackendV4 {
            addr: addr_to_map(self.addr),
            port: port_to_map(self.port),
            proto: self.protocol.number(),
            flags,
        }
    }

    /// Decodes a backend read from a map; `None` for an unknown protocol.
    pub fn from_value(value: &BackendV4) -> Option<Self> {
        Some(BackendKey {
            addr: addr_from_map(value.addr),
            port: port_from_map(value.port),
            protocol: Protocol::from_number(value.proto)?,
        })
    }
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.protocol)
    }
}

/// An address as the kernel compares it: the packet's bytes, read as a
/// native `u32` (network byte order in memory).
pub(crate) fn addr_to_map(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// Inverse of [`addr_to_map`].
pub(crate) fn addr_from_map(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

/// A port in network byte order.
pub(crate) fn port_to_map(port: u16) -> u16 {
    port.to_be()
}

/// Inverse of [`port_to_map`].
pub(crate) fn port_from_map(raw: u16) -> u16 {
    u16::from_be(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_ports_are_stored_as_the_wire_bytes() {
        let key = MasterKey {
            frontend: FrontendKey {
                addr: Ipv4Addr::new(10, 96, 0, 10),
                port: 80,
                protocol: Protocol::Udp,
            },
            scope: Scope::Local,
        };
        let entry = key.entry(3);
        assert_eq!(entry.addr.to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(entry.port.to_ne_bytes(), [0, 80]);
        assert_eq!(
            (entry.slot, entry.proto, entry.scope),
            (3, proto::UDP, scope::LOCAL)
        );
        assert_eq!(MasterKey::from_entry(&entry), Some((key, 3)));
    }

    #[test]
    fn keys_the_engine_never_writes_do_not_decode() {
        let good = MasterKey {
            frontend: FrontendKey {
                addr: Ipv4Addr::new(10, 0, 0, 1),
                port: 53,
                protocol: Protocol::Tcp,
            },
            scope: Scope::All,
        }
        .entry(0);
        for bad in [
            ServiceKeyV4 {
                pad: [0, 1],
                ..good
            },
            ServiceKeyV4 { proto: 1, ..good },
            ServiceKeyV4 { scope: 7, ..good },
        ] {
            assert_eq!(MasterKey::from_entry(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn protocols_parse_like_kubernetes() {
        let table = [
            (None, Some(Protocol::Tcp)),
            (Some("TCP"), Some(Protocol::Tcp)),
            (Some("UDP"), Some(Protocol::Udp)),
            (Some("SCTP"), Some(Protocol::Sctp)),
            (Some("tcp"), None),
            (Some("ICMP"), None),
        ];
        for (field, want) in table {
            assert_eq!(Protocol::parse(field), want, "{field:?}");
        }
    }
}
