//! Services, EndpointSlices and the node, reduced to what the proxy programs.

use std::fmt;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::error::{Error, Result};
use crate::keys::Protocol;

/// The label tying an EndpointSlice to its Service (same namespace).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (3 hours, as
/// in Kubernetes).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

/// The annotation with which a Service picks its load-balancing algorithm
/// (`random` or `maglev`), overriding the agent's `--lb-algorithm`.
pub const LB_ALGORITHM_ANNOTATION: &str = "coxswain.io/lb-algorithm";

/// How new flows choose among a Service's backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LbAlgorithm {
    /// A random backend per new flow (kube-proxy's behaviour).
    #[default]
    Random,
    /// Maglev consistent hashing of the flow's 5-tuple: every node picks
    /// the same backend for a flow, and a backend change moves few flows.
    Maglev,
}

impl LbAlgorithm {
    /// `random` or `maglev`.
    pub const fn as_str(self) -> &'static str {
        match self {
            LbAlgorithm::Random => "random",
            LbAlgorithm::Maglev => "maglev",
        }
    }
}

impl std::str::FromStr for LbAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "random" => Ok(LbAlgorithm::Random),
            "maglev" => Ok(LbAlgorithm::Maglev),
            other => Err(format!(
                "unknown load-balancing algorithm {other:?}: expected random or maglev"
            )),
        }
    }
}

impl fmt::Display for LbAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Namespace and name of an object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// Namespace (`default` when the object has none).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectRef {
    /// A reference from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub(crate) fn of(meta: &ObjectMeta, kind: &'static str) -> Result<Self> {
        let name = meta.name.clone().ok_or(Error::MissingName { kind })?;
        let namespace = meta
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        Ok(Self { namespace, name })
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The node this agent runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// `metadata.name` of the Node: endpoints whose `nodeName` equals it are
    /// local.
    pub name: String,
    /// The node's IPv4 addresses: each serves every NodePort.
    pub addresses: Vec<Ipv4Addr>,
}

/// A Service the proxy programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceModel {
    pub cluster_ip: Ipv4Addr,
    pub ports: Vec<ServicePortModel>,
    /// `type: NodePort` or `LoadBalancer`: ports with a `nodePort` are served
    /// on every node address.
    pub node_ports: bool,
    /// `spec.externalIPs`, then `status.loadBalancer.ingress[].ip`.
    pub external_ips: Vec<Ipv4Addr>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `sessionAffinity: ClientIP`, with its timeout.
    pub affinity_timeout_s: Option<u32>,
    /// The [`LB_ALGORITHM_ANNOTATION`], when valid; `None`: the agent's
    /// default.
    pub lb_algorithm: Option<LbAlgorithm>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServicePortModel {
    /// `""` when unnamed.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    pub node_port: Option<u16>,
}

/// Why a Service gets no map entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Skip {
    NoSpec,
    ExternalName,
    Headless,
    NoIpv4ClusterIp,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Skip::NoSpec => "no spec",
            Skip::ExternalName => "type ExternalName",
            Skip::Headless => "headless (clusterIP None)",
            Skip::NoIpv4ClusterIp => "no IPv4 ClusterIP",
        })
    }
}

impl ServiceModel {
    pub fn parse(service: &Service) -> Result<Self, Skip> {
        let spec = service.spec.as_ref().ok_or(Skip::NoSpec)?;
        let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
        if type_ == "ExternalName" {
            return Err(Skip::ExternalName);
        }
        if spec.cluster_ip.as_deref() == Some("None") {
            return Err(Skip::Headless);
        }
        let cluster_ip = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .find_map(|ip| ip.parse::<Ipv4Addr>().ok())
            .ok_or(Skip::NoIpv4ClusterIp)?;
        let node_ports = matches!(type_, "NodePort" | "LoadBalancer");
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let port = u16::try_from(p.port).ok().filter(|&n| n != 0);
                let protocol = Protocol::parse(p.protocol.as_deref());
                let (Some(port), Some(protocol)) = (port, protocol) else {
                    tracing::debug!(port = p.port, protocol = ?p.protocol, "skipping unusable Service port");
                    return None;
                };
                Some(ServicePortModel {
                    name: p.name.clone().unwrap_or_default(),
                    port,
                    protocol,
                    node_port: p
                        .node_port
                        .and_then(|n| u16::try_from(n).ok())
                        .filter(|&n| node_ports && n != 0),
                })
            })
            .collect();
        let external_ips = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.parse::<Ipv4Addr>().ok())
            .chain(
                service
                    .status
                    .iter()
                    .filter_map(|s| s.load_balancer.as_ref())
                    .filter_map(|lb| lb.ingress.as_ref())
                    .flatten()
                    // ipMode Proxy: the load balancer delivers to node ports
                    // or pods itself; the IP is not ours to answer.
                    .filter(|ing| ing.ip_mode.as_deref() != Some("Proxy"))
                    .filter_map(|ing| ing.ip.as_deref()?.parse::<Ipv4Addr>().ok()),
            )
            .collect();
        let affinity_timeout_s =
            (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
                spec.session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .and_then(|t| u32::try_from(t).ok())
                    .filter(|&t| t > 0)
                    .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S)
            });
        let lb_algorithm = service
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LB_ALGORITHM_ANNOTATION))
            .and_then(|value| match value.parse() {
                Ok(algorithm) => Some(algorithm),
                Err(e) => {
                    tracing::warn!(
                        service = ?service.metadata.name,
                        annotation = LB_ALGORITHM_ANNOTATION,
                        "{e}; using the agent's default"
                    );
                    None
                }
            });
        Ok(ServiceModel {
            cluster_ip,
            lb_algorithm,
            ports,
            node_ports,
            external_ips,
            external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            affinity_timeout_s,
        })
    }

    /// Whether the node's addresses are part of this Service's frontends.
    pub fn uses_node_addresses(&self) -> bool {
        self.ports.iter().any(|p| p.node_port.is_some())
    }
}

/// The IPv4 part of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SliceModel {
    /// The Service it belongs to (label [`SERVICE_NAME_LABEL`]).
    pub service: String,
    pub ports: Vec<SlicePortModel>,
    pub endpoints: Vec<EndpointModel>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SlicePortModel {
    /// `""` when unnamed; matches the Service port of the same name.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EndpointModel {
    pub addr: Ipv4Addr,
    /// `conditions.ready`, unset meaning true.
    pub ready: bool,
    /// `conditions.serving`, unset meaning true.
    pub serving: bool,
    /// `conditions.terminating`, unset meaning false.
    pub terminating: bool,
    pub node_name: Option<String>,
}

impl SliceModel {
    /// `None` for a slice the proxy does not use: not IPv4, or not tied to a
    /// Service.
    pub fn parse(slice: &EndpointSlice) -> Option<Self> {
        if slice.address_type != "IPv4" {
            return None;
        }
        let service = slice
            .metadata
            .labels
            .as_ref()?
            .get(SERVICE_NAME_LABEL)?
            .clone();
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(SlicePortModel {
                    name: p.name.clone().unwrap_or_default(),
                    port: p
                        .port
                        .and_then(|n| u16::try_from(n).ok())
                        .filter(|&n| n != 0)?,
                    protocol: Protocol::parse(p.protocol.as_deref())?,
                })
            })
            .collect();
        let endpoints = slice
            .endpoints
            .iter()
            .flatten()
            .filter_map(|e| {
                // As kube-proxy: only the first address is used.
                let addr = e.addresses.first()?.parse::<Ipv4Addr>().ok()?;
                let conditions = e.conditions.as_ref();
                Some(EndpointModel {
                    addr,
                    ready: conditions.and_then(|c| c.ready).unwrap_or(true),
                    serving: conditions.and_then(|c| c.serving).unwrap_or(true),
                    terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                    node_name: e.node_name.clone(),
                })
            })
            .collect();
        Some(SliceModel {
            service,
            ports,
            endpoints,
        })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ServiceSpec;

    use super::*;

    fn service(spec: ServiceSpec) -> Service {
        Service {
            spec: Some(spec),
            ..Service::default()
        }
    }

    #[test]
    fn services_without_an_ipv4_cluster_ip_are_skipped() {
        let table: [(&str, ServiceSpec, Result<Ipv4Addr, Skip>); 6] = [
            (
                "plain",
                ServiceSpec {
                    cluster_ip: Some("10.96.0.1".into()),
                    ..Default::default()
                },
                Ok(Ipv4Addr::new(10, 96, 0, 1)),
            ),
            (
                "headless",
                ServiceSpec {
                    cluster_ip: Some("None".into()),
                    ..Default::default()
                },
                Err(Skip::Headless),
            ),
            (
                "unallocated",
                ServiceSpec::default(),
                Err(Skip::NoIpv4ClusterIp),
            ),
            (
                "ipv6 only",
                ServiceSpec {
                    cluster_ip: Some("fd00::1".into()),
                    ..Default::default()
                },
                Err(Skip::NoIpv4ClusterIp),
            ),
            (
                "dual stack, IPv6 primary",
                ServiceSpec {
                    cluster_ip: Some("fd00::1".into()),
                    cluster_ips: Some(vec!["fd00::1".into(), "10.96.0.2".into()]),
                    ..Default::default()
                },
                Ok(Ipv4Addr::new(10, 96, 0, 2)),
            ),
            (
                "external name",
                ServiceSpec {
                    type_: Some("ExternalName".into()),
                    external_name: Some("example.com".into()),
                    ..Default::default()
                },
                Err(Skip::ExternalName),
            ),
        ];
        for (name, spec, want) in table {
            let got = ServiceModel::parse(&service(spec)).map(|m| m.cluster_ip);
            assert_eq!(got, want, "{name}");
        }
    }
}
