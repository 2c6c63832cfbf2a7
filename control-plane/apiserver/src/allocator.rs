//! Service cluster IP and node port allocation, conflict-free across API servers.
//!
//! Each allocated address or port is a key in the store (`/registry/ranges/serviceips/<ip>`,
//! `/registry/ranges/servicenodeports/<port>`) created with the store's atomic create: two
//! servers racing for the same value cannot both win. A released value's key is deleted.
//!
//! The first address of the range belongs to the `default/kubernetes` Service: it is never
//! handed out at random, and only that Service may claim it.

use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use coxswain_store::{Error as StoreError, Store};

use crate::status::{ApiError, Result, Target};

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
/// The Service that owns the first address of the range.
pub(crate) const KUBERNETES_SERVICE_OWNER: &str = "default/kubernetes";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";
/// Candidates tried before an allocation gives up as "range full".
const MAX_PROBES: u64 = 4096;

/// An IPv4 range in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    base: u32,
    prefix: u8,
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("service CIDR {s:?} is not of the form a.b.c.d/n"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|e| format!("service CIDR {s:?}: {e}"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("service CIDR {s:?}: the prefix length must be 8 to 30"))?;
        let mask = u32::MAX << (32 - prefix);
        Ok(Ipv4Cidr {
            base: u32::from(addr) & mask,
            prefix,
        })
    }
}

impl Ipv4Cidr {
    fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == self.base
    }

    /// The first address: the `kubernetes` Service's.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    /// The usable addresses are offsets 1..size-1 (not the network or broadcast address).
    fn usable(&self, ip: Ipv4Addr) -> bool {
        let offset = u64::from(u32::from(ip) - self.base);
        self.contains(ip) && offset >= 1 && offset < self.size() - 1
    }
}

/// Allocates Service cluster IPs and node ports.
#[derive(Debug)]
pub struct Allocator {
    store: Arc<dyn Store>,
    cidr: Ipv4Cidr,
    ports: (u16, u16),
}

fn random_u64() -> u64 {
    let id = uuid::Uuid::new_v4();
    let (hi, _) = id.as_u64_pair();
    hi
}

impl Allocator {
    /// An allocator over `cidr` and the node port range `ports` (inclusive).
    pub fn new(store: Arc<dyn Store>, cidr: Ipv4Cidr, ports: (u16, u16)) -> Allocator {
        Allocator { store, cidr, ports }
    }

    async fn claim(&self, key: String, owner: &str) -> Result<bool> {
        match self.store.create(&key, Bytes::from(owner.to_owned())).await {
            Ok(_) => Ok(true),
            Err(StoreError::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(ApiError::from_store(e, &Target::default())),
        }
    }

    /// The address reserved for the `kubernetes` Service.
    pub fn kubernetes_ip(&self) -> Ipv4Addr {
        self.cidr.first()
    }

    /// Allocates a free cluster IP for the Service `owner` (`namespace/name`), never the
    /// first address (reserved for the `kubernetes` Service).
    pub async fn allocate_ip(&self, owner: &str) -> Result<Ipv4Addr> {
        let usable = self.cidr.size() - 3;
        let start = random_u64() % usable;
        for probe in 0..MAX_PROBES.min(usable) {
            let offset = 2 + (start + probe) % usable;
            let ip = Ipv4Addr::from(self.cidr.base + offset as u32);
            if self.claim(format!("{IP_PREFIX}{ip}"), owner).await? {
                return Ok(ip);
            }
        }
        Err(ApiError::Internal(
            "failed to allocate a service IP: the range is full".to_owned(),
        ))
    }

    /// Claims a specific cluster IP; `Err(message)` if it is out of range or taken.
    pub async fn claim_ip(&self, ip: &str, owner: &str) -> Result<std::result::Result<(), String>> {
        let Ok(addr) = ip.parse::<Ipv4Addr>() else {
            return Ok(Err("must be a valid IP address".to_owned()));
        };
        if !self.cidr.usable(addr) {
            return Ok(Err(
                "provided IP is not in the valid range. The range of valid IPs is the service CIDR"
                    .to_owned(),
            ));
        }
        if addr == self.cidr.first() && owner != KUBERNETES_SERVICE_OWNER {
            return Ok(Err("provided IP is already allocated".to_owned()));
        }
        if self.claim(format!("{IP_PREFIX}{addr}"), owner).await? {
            Ok(Ok(()))
        } else {
            Ok(Err("provided IP is already allocated".to_owned()))
        }
    }

    /// Allocates a free node port.
    pub async fn allocate_port(&self, owner: &str) -> Result<u16> {
        let size = u64::from(self.ports.1 - self.ports.0) + 1;
        let start = random_u64() % size;
        for probe in 0..size {
            let port = self.ports.0 + ((start + probe) % size) as u16;
            if self.claim(format!("{PORT_PREFIX}{port}"), owner).await? {
                return Ok(port);
            }
        }
        Err(ApiError::Internal(
            "failed to allocate a node port: the range is full".to_owned(),
        ))
    }

    /// Claims a specific node port; `Err(message)` if it is out of range or taken.
    pub async fn claim_port(
        &self,
        port: i64,
        owner: &str,
    ) -> Result<std::result::Result<(), String>> {
        if port < i64::from(self.ports.0) || port > i64::from(self.ports.1) {
            return Ok(Err(format!(
                "provided port is not in the valid range. The range of valid ports is {}-{}",
                self.ports.0, self.ports.1
            )));
        }
        if self.claim(format!("{PORT_PREFIX}{port}"), owner).await? {
            Ok(Ok(()))
        } else {
            Ok(Err("provided port is already allocated".to_owned()))
        }
    }

    /// Releases a cluster IP (absent ones are ignored).
    pub async fn release_ip(&self, ip: &str) {
        let _ = self.store.delete(&format!("{IP_PREFIX}{ip}"), None).await;
    }

    /// Releases a node port (absent ones are ignored).
    pub async fn release_port(&self, port: i64) {
        let _ = self
            .store
            .delete(&format!("{PORT_PREFIX}{port}"), None)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing() {
        let c: Ipv4Cidr = "10.96.0.0/12".parse().unwrap();
        assert_eq!(c.size(), 1 << 20);
        assert!(c.usable("10.96.0.1".parse().unwrap()));
        assert!(!c.usable("10.96.0.0".parse().unwrap()));
        assert!(!c.usable("10.111.255.255".parse().unwrap()));
        assert!(c.usable("10.111.255.254".parse().unwrap()));
        assert!(!c.usable("10.112.0.1".parse().unwrap()));
        assert!("10.96.0.0".parse::<Ipv4Cidr>().is_err());
        assert!("10.96.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert_eq!(c.first(), Ipv4Addr::new(10, 96, 0, 1));
    }

    async fn allocator(cidr: &str) -> (tempfile::TempDir, Allocator) {
        let dir = tempfile::tempdir().unwrap();
        let config = coxswain_store::EmbeddedConfig::new(dir.path().join("s.redb"));
        let store = coxswain_store::EmbeddedStore::open(config).await.unwrap();
        (dir, Allocator::new(Arc::new(store), cidr.parse().unwrap(), (30000, 30001)))
    }

    #[tokio::test]
    async fn the_first_address_is_reserved_for_the_kubernetes_service() {
        let (_dir, alloc) = allocator("10.96.0.0/29").await;
        // A /29 has 6 usable addresses: .1 is reserved, so exactly 5 are handed out.
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(alloc.allocate_ip(&format!("default/s{i}")).await.unwrap());
        }
        got.sort();
        let want: Vec<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(10, 96, 0, i)).collect();
        assert_eq!(got, want);
        assert!(alloc.allocate_ip("default/full").await.is_err(), "the range is full");
        assert_eq!(
            alloc.claim_ip("10.96.0.1", "default/sneaky").await.unwrap(),
            Err("provided IP is already allocated".to_owned())
        );
        assert_eq!(alloc.claim_ip("10.96.0.1", KUBERNETES_SERVICE_OWNER).await.unwrap(), Ok(()));
        assert_eq!(alloc.kubernetes_ip(), Ipv4Addr::new(10, 96, 0, 1));
    }
}
