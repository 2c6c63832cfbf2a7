//! Read-only views of the wanted state, for introspection (`coxctl
//! dataplane services`) and tests.

use std::fmt;
use std::net::Ipv4Addr;

use coxswain_ebpf_common::{backend_flags, service_flags};

use crate::desired::FrontendKind;
use crate::keys::{Protocol, Scope};
use crate::model::ObjectRef;

/// One master entry a Service wants: a frontend address and port in one
/// scope, with its backends in slot order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendView {
    /// The Service.
    pub service: ObjectRef,
    /// The Service port's name (`""` when unnamed).
    pub port_name: String,
    /// How the address was derived.
    pub kind: FrontendKind,
    /// Frontend address.
    pub addr: Ipv4Addr,
    /// Frontend port (the `port`, or the `nodePort` for NodePort frontends).
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Scope of the master entry.
    pub scope: Scope,
    /// [`service_flags`] of the master entry.
    pub flags: u16,
    /// ClientIP affinity timeout, when affinity is on.
    pub affinity_timeout_s: Option<u32>,
    /// The service (reverse-NAT) id, once programmed.
    pub service_id: Option<u32>,
    /// False when another Service with a lower namespace/name wants the same
    /// address, port, protocol and scope: that one is programmed.
    pub active: bool,
    /// Slot `i + 1` names `backends[i]`. Empty: traffic is rejected.
    pub backends: Vec<BackendView>,
}

/// A backend of a [`FrontendView`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendView {
    /// Endpoint address.
    pub addr: Ipv4Addr,
    /// Target port.
    pub port: u16,
    /// [`backend_flags`] as this Service sees the endpoint.
    pub flags: u8,
    /// The backend id, once programmed.
    pub backend_id: Option<u32>,
}

/// Names of [`service_flags`] bits, in bit order.
pub const SERVICE_FLAG_NAMES: [(u16, &str); 5] = [
    (service_flags::AFFINITY, "affinity"),
    (service_flags::SNAT, "snat"),
    (service_flags::NODE_PORT, "node-port"),
    (service_flags::EXTERNAL, "external"),
    (service_flags::MAGLEV, "maglev"),
];

/// Names of [`backend_flags`] bits, in bit order.
pub const BACKEND_FLAG_NAMES: [(u8, &str); 2] = [
    (backend_flags::TERMINATING, "terminating"),
    (backend_flags::LOCAL, "local"),
];

/// `a,b` for the set bits of `flags`, `-` for none.
pub fn flag_names<T>(flags: T, names: &[(T, &str)]) -> String
where
    T: Copy + std::ops::BitAnd<Output = T> + PartialEq + Default,
{
    let set: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| flags & *bit != T::default())
        .map(|(_, name)| *name)
        .collect();
    if set.is_empty() {
        "-".to_owned()
    } else {
        set.join(",")
    }
}

impl fmt::Display for FrontendView {
    /// `10.96.0.10:80/TCP all [affinity] -> 10.0.0.1:8080 10.0.0.2:8080(local)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}/{} {} [{}]",
            self.addr,
            self.port,
            self.protocol,
            self.scope.as_str(),
            flag_names(self.flags, &SERVICE_FLAG_NAMES)
        )?;
        if let Some(timeout) = self.affinity_timeout_s {
            write!(f, " timeout={timeout}s")?;
        }
        f.write_str(" ->")?;
        if self.backends.is_empty() {
            f.write_str(" reject")?;
        }
        for backend in &self.backends {
            write!(f, " {backend}")?;
        }
        Ok(())
    }
}

impl fmt::Display for BackendView {
    /// `10.0.0.1:8080`, with `(local,terminating)` when flagged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.addr, self.port)?;
        if self.flags != 0 {
            write!(f, "({})", flag_names(self.flags, &BACKEND_FLAG_NAMES))?;
        }
        Ok(())
    }
}
