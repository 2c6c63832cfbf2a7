//! The benchmark's Services and EndpointSlices, as the API server would
//! hand them to a node's proxy.

use std::{collections::BTreeMap, net::Ipv4Addr};

use coxswain_proxy::SERVICE_NAME_LABEL;
use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use crate::topology::{Mode, SERVICE_PORT, TARGET_PORT};

/// The namespace of every benchmark Service.
pub const NAMESPACE: &str = "bench";

/// The name of Service `i`.
pub fn service_name(i: usize) -> String {
    format!("svc-{i}")
}

/// Service `i` of `mode`: a ClusterIP with one TCP port, `http`.
pub fn service(mode: Mode, i: usize) -> Service {
    let vip = mode.vip(i).to_string();
    Service {
        metadata: ObjectMeta {
            namespace: Some(NAMESPACE.to_owned()),
            name: Some(service_name(i)),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            cluster_ip: Some(vip.clone()),
            cluster_ips: Some(vec![vip]),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: i32::from(SERVICE_PORT),
                target_port: Some(IntOrString::String("http".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The one EndpointSlice of Service `i`, with `endpoints` ready.
pub fn slice(i: usize, endpoints: &[Ipv4Addr]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some(NAMESPACE.to_owned()),
            name: Some(format!("{}-abcde", service_name(i))),
            labels: Some(BTreeMap::from([(
                SERVICE_NAME_LABEL.to_owned(),
                service_name(i),
            )])),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".to_owned(),
        endpoints: Some(
            endpoints
                .iter()
                .map(|addr| Endpoint {
                    addresses: vec![addr.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    node_name: Some("bench-node".to_owned()),
                    ..Endpoint::default()
                })
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            name: Some("http".to_owned()),
            port: Some(i32::from(TARGET_PORT)),
            protocol: Some("TCP".to_owned()),
            ..EndpointPort::default()
        }]),
    }
}
