//! The node's CNI configuration: a bridge with host-local addresses from the
//! node's pod CIDR, plus portmap for `hostPort`.

use std::{net::Ipv4Addr, path::Path};

/// Errors of writing the CNI configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pod CIDR is not an IPv4 CIDR with room for pods.
    #[error("invalid pod CIDR {0:?}: expected an IPv4 CIDR such as 10.244.1.0/24 (prefix 8..=29)")]
    InvalidCidr(String),
    /// The file could not be written.
    #[error("failed to write the CNI config {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The name of the file written in the CNI config directory.
pub const CONFLIST_NAME: &str = "10-coxswain.conflist";

/// A parsed IPv4 CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// The network address.
    pub network: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// Parses `a.b.c.d/len` (host bits are cleared).
    pub fn parse(s: &str) -> Result<Ipv4Cidr, Error> {
        let bad = || Error::InvalidCidr(s.to_owned());
        let (addr, len) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = len.parse().map_err(|_| bad())?;
        if !(8..=29).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Ipv4Cidr {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    /// The first host address (the bridge's gateway address).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The conflist for `cidr` on bridge `bridge`.
pub fn conflist(bridge: &str, cidr: Ipv4Cidr, ip_masq: bool, ipam_dir: &Path) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "coxswain",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": ip_masq,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": cidr.to_string(), "gateway": cidr.gateway().to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir.display().to_string(),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    }))
    .unwrap_or_default()
}

/// Writes the conflist into `conf_dir` (atomically: containerd watches the
/// directory). Returns whether the content changed.
pub fn write_conflist(
    conf_dir: &Path,
    bridge: &str,
    cidr: Ipv4Cidr,
    ip_masq: bool,
    ipam_dir: &Path,
) -> Result<bool, Error> {
    let content = conflist(bridge, cidr, ip_masq, ipam_dir);
    let path = conf_dir.join(CONFLIST_NAME);
    if std::fs::read_to_string(&path).is_ok_and(|c| c == content) {
        return Ok(false);
    }
    let err = |source| Error::Write {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(conf_dir).map_err(err)?;
    let tmp = conf_dir.join(format!(".{CONFLIST_NAME}.tmp"));
    std::fs::write(&tmp, content).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cidrs() {
        let c = Ipv4Cidr::parse("10.244.1.7/24").unwrap();
        assert_eq!(c.to_string(), "10.244.1.0/24");
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        for bad in ["10.244.1.0", "10.244.1.0/31", "x/24", "10.0.0.0/4", "fd00::/64"] {
            assert!(Ipv4Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn conflist_chains_bridge_and_portmap() {
        let c = Ipv4Cidr::parse("10.88.0.0/16").unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&conflist("cox0", c, false, Path::new("/x"))).unwrap();
        assert_eq!(v["plugins"][0]["type"], "bridge");
        assert_eq!(v["plugins"][0]["bridge"], "cox0");
        assert_eq!(v["plugins"][0]["ipMasq"], false);
        assert_eq!(v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], "10.88.0.0/16");
        assert_eq!(v["plugins"][1]["type"], "portmap");
    }
}
