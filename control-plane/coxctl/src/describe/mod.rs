//! `coxctl describe TYPE [NAME...]`: an object in readable form, then its Events, as kubectl
//! describe. Pods, Deployments, Services, Nodes, ConfigMaps and Secrets get kind-specific
//! sections (one file each); every other kind goes through the generic renderer over its
//! JSON (`text.rs`).

use std::io::Write;

use anyhow::{Context, Result, bail};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use serde_json::Value;

use crate::client::{Connection, KubeResultExt};
use crate::output::str_at;
use crate::resources::{Catalog, Resource, split_kind_name};

mod config;
mod deployment;
mod node;
mod pod;
mod service;
mod text;

use config::{describe_config_map, describe_secret};
use deployment::describe_deployment;
use node::describe_node;
use pod::describe_pod;
pub use pod::pod_template;
use service::describe_service;
pub use text::{Text, selector_text};
use text::{describe_generic, events_section};

/// Options of `coxctl describe`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `TYPE [NAME...]` or `TYPE/NAME` (no name: every object of the type).
    #[arg(required = true, value_name = "TYPE[/NAME]")]
    targets: Vec<String>,
    /// Label selector, when no name is given.
    #[arg(long, short = 'l')]
    selector: Option<String>,
    /// Describes objects in every namespace (when no name is given).
    #[arg(long, short = 'A')]
    all_namespaces: bool,
}

/// Renders one object and its Events; `related` supplies what some kinds show beside
/// themselves.
pub fn render(resource: &Resource, o: &Value, related: &Related) -> String {
    let mut text = Text::default();
    match (resource.group.as_str(), resource.kind.as_str()) {
        ("", "Pod") => describe_pod(&mut text, o),
        ("apps", "Deployment") => describe_deployment(&mut text, o, &related.replicasets),
        ("", "Service") => describe_service(&mut text, o, &related.slices),
        ("", "Node") => describe_node(&mut text, o, &related.pods, related.node_lease.as_ref()),
        ("", "ConfigMap") => describe_config_map(&mut text, o),
        ("", "Secret") => describe_secret(&mut text, o),
        _ => describe_generic(&mut text, o, resource.namespaced),
    }
    events_section(&mut text, &related.events, Timestamp::now());
    text.finish()
}

/// Objects some descriptions show beside the described one.
#[derive(Debug, Default)]
pub struct Related {
    /// A Deployment's namespace's ReplicaSets.
    pub replicasets: Vec<Value>,
    /// A Service's EndpointSlices.
    pub slices: Vec<EndpointSlice>,
    /// A Node's pods.
    pub pods: Vec<Pod>,
    /// A Node's heartbeat Lease (`kube-node-lease`).
    pub node_lease: Option<Lease>,
    /// The Events about the object.
    pub events: Vec<Event>,
}

async fn related(
    conn: &Connection,
    catalog: &Catalog,
    resource: &Resource,
    o: &Value,
) -> Result<Related> {
    let mut related = Related::default();
    let name = str_at(o, "metadata.name").unwrap_or("");
    let namespace = str_at(o, "metadata.namespace").unwrap_or(&conn.namespace);
    match (resource.group.as_str(), resource.kind.as_str()) {
        ("apps", "Deployment") => {
            if let Some(rs) = catalog.by_kind(&resource.api_version(), "ReplicaSet") {
                let list = rs
                    .api(conn, Some(namespace))
                    .list(&ListParams::default())
                    .await
                    .server(conn)?;
                related.replicasets = list
                    .items
                    .into_iter()
                    .map(serde_json::to_value)
                    .collect::<Result<_, _>>()?;
            }
        }
        ("", "Service")
            if catalog
                .by_kind("discovery.k8s.io/v1", "EndpointSlice")
                .is_some() =>
        {
            let api: Api<EndpointSlice> = Api::namespaced(conn.client.clone(), namespace);
            let params =
                ListParams::default().labels(&format!("kubernetes.io/service-name={name}"));
            related.slices = api.list(&params).await.server(conn)?.items;
        }
        ("", "Node") => {
            let api: Api<Pod> = Api::all(conn.client.clone());
            let params = ListParams::default().fields(&format!("spec.nodeName={name}"));
            related.pods = api.list(&params).await.server(conn)?.items;
            let leases: Api<Lease> = Api::namespaced(conn.client.clone(), "kube-node-lease");
            related.node_lease = leases.get_opt(name).await.server(conn)?;
        }
        _ => {}
    }
    Ok(related)
}

async fn events_of(conn: &Connection, resource: &Resource, o: &Value) -> Result<Vec<Event>> {
    let api: Api<Event> = match str_at(o, "metadata.namespace").filter(|_| resource.namespaced) {
        Some(ns) => Api::namespaced(conn.client.clone(), ns),
        None => Api::all(conn.client.clone()),
    };
    let name = str_at(o, "metadata.name").unwrap_or("");
    let mut selectors = match str_at(o, "metadata.uid") {
        Some(uid) => vec![format!("involvedObject.uid={uid}")],
        None => vec![format!(
            "involvedObject.name={name},involvedObject.kind={}",
            resource.kind
        )],
    };
    // Upstream's kubelet records a Node's events with the node's name as its uid.
    if resource.group.is_empty() && resource.kind == "Node" {
        selectors.push(format!("involvedObject.uid={name}"));
    }
    let mut events: Vec<Event> = Vec::new();
    for selector in selectors {
        for e in api
            .list(&ListParams::default().fields(&selector))
            .await
            .server(conn)?
            .items
        {
            if !events
                .iter()
                .any(|known| known.metadata.uid == e.metadata.uid)
            {
                events.push(e);
            }
        }
    }
    Ok(events)
}

/// Runs `coxctl describe`.
pub async fn run(conn: &Connection, args: &Args) -> Result<i32> {
    let catalog = Catalog::load(conn).await?;
    let (typed, names): (String, Vec<String>) = match split_kind_name(&args.targets[0]) {
        Some((kind, name)) => {
            if args.targets.len() > 1 {
                bail!("describe takes TYPE/NAME alone, or TYPE NAME...");
            }
            (kind.to_owned(), vec![name.to_owned()])
        }
        None => (args.targets[0].clone(), args.targets[1..].to_vec()),
    };
    let resource = catalog.resolve(&typed)?;
    let namespace = (!args.all_namespaces || !names.is_empty()).then_some(conn.namespace.as_str());
    let api = resource.api(conn, namespace);
    let mut objects = Vec::new();
    let mut failed = false;
    if names.is_empty() {
        let params = ListParams {
            label_selector: args.selector.clone(),
            ..ListParams::default()
        };
        for o in api.list(&params).await.server(conn)?.items {
            objects.push(serde_json::to_value(o)?);
        }
        if objects.is_empty() {
            eprintln!("No resources found");
        }
    } else {
        for name in &names {
            match api.get(name).await.server(conn) {
                Ok(o) => objects.push(serde_json::to_value(o)?),
                Err(e) => {
                    eprintln!("{e}");
                    failed = true;
                }
            }
        }
    }
    let mut out = std::io::stdout().lock();
    for (i, o) in objects.iter().enumerate() {
        let mut o = o.clone();
        if let Some(map) = o.as_object_mut() {
            map.insert("apiVersion".into(), resource.api_version().into());
            map.insert("kind".into(), resource.kind.clone().into());
        }
        let mut related = related(conn, &catalog, resource, &o).await?;
        related.events = events_of(conn, resource, &o).await?;
        if i > 0 {
            writeln!(out)?;
            writeln!(out)?;
        }
        write!(out, "{}", render(resource, &o, &related)).context("failed to write to stdout")?;
    }
    Ok(i32::from(failed))
}

#[cfg(test)]
mod tests {
    use super::text::label_for;
    use super::*;
    use crate::resources::tests::catalog;
    use serde_json::json;

    #[test]
    fn labels_for_keys() {
        let table = [
            ("creationTimestamp", "Creation Timestamp"),
            ("replicas", "Replicas"),
            ("podCIDR", "Pod CIDR"),
            ("hostIP", "Host IP"),
            ("app.kubernetes.io/name", "app.kubernetes.io/name"),
        ];
        for (key, label) in table {
            assert_eq!(label_for(key), label, "{key}");
        }
    }

    #[test]
    fn generic_rendering_aligns_nested_fields() {
        let catalog = catalog();
        let hpa = catalog.resolve("hpa").unwrap();
        let o = json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web", "tier": "front"}},
            "spec": {"minReplicas": 1, "maxReplicas": 5, "scaleTargetRef": {"kind": "Deployment", "name": "web"}},
        });
        let text = render(hpa, &o, &Related::default());
        assert_eq!(
            text,
            "Name:         web\n\
             Namespace:    default\n\
             Labels:       app=web\n\
             \x20             tier=front\n\
             Annotations:  <none>\n\
             API Version:  autoscaling/v2\n\
             Kind:         HorizontalPodAutoscaler\n\
             Spec:\n\
             \x20 Max Replicas:  5\n\
             \x20 Min Replicas:  1\n\
             \x20 Scale Target Ref:\n\
             \x20   Kind:  Deployment\n\
             \x20   Name:  web\n\
             Events:    <none>\n"
        );
    }

    #[test]
    fn config_maps_show_data_and_secrets_only_sizes() {
        let catalog = catalog();
        let cm = catalog.resolve("cm").unwrap();
        let o = json!({
            "metadata": {"name": "settings", "namespace": "default"},
            "data": {"app.conf": "a\tb\nc"},
        });
        assert_eq!(
            render(cm, &o, &Related::default()),
            "Name:         settings\n\
             Namespace:    default\n\
             Labels:       <none>\n\
             Annotations:  <none>\n\
             \n\
             Data\n\
             ====\n\
             app.conf:\n\
             ----\n\
             a\tb\nc\n\
             \n\
             \n\
             BinaryData\n\
             ====\n\
             \n\
             Events:  <none>\n"
        );
        let secret = Resource {
            kind: "Secret".into(),
            plural: "secrets".into(),
            ..cm.clone()
        };
        let o = json!({
            "metadata": {"name": "db", "namespace": "default"},
            "type": "Opaque",
            "data": {"password": "aHVudGVyMg=="},
        });
        let text = render(&secret, &o, &Related::default());
        assert!(text.contains("Type:  Opaque\n"), "{text}");
        assert!(text.contains("password:  7 bytes\n"), "{text}");
        assert!(
            !text.contains("aHVudGVyMg") && !text.contains("hunter2"),
            "{text}"
        );
    }

    #[test]
    fn deployment_lines() {
        let catalog = catalog();
        let deploy = catalog.resolve("deploy").unwrap();
        let o = json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "strategy": {"type": "RollingUpdate"},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "web:2", "ports": [{"containerPort": 80}]}]}}},
            "status": {"replicas": 3, "updatedReplicas": 3, "availableReplicas": 2, "unavailableReplicas": 1,
                       "conditions": [{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"}]},
        });
        // The new ReplicaSet is found by template (its pod-template-hash label aside), not
        // by revision.
        let rs = |name: &str, rev: &str, replicas: i64, image: &str| {
            json!({
                "metadata": {"name": name, "annotations": {"deployment.kubernetes.io/revision": rev}, "ownerReferences": [{"uid": "u1", "controller": true}]},
                "spec": {"replicas": replicas, "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": name}},
                         "spec": {"containers": [{"name": "web", "image": image, "ports": [{"containerPort": 80}]}]}}},
                "status": {"replicas": replicas},
            })
        };
        let related = Related {
            replicasets: vec![
                rs("web-a", "1", 0, "web:1"),
                rs("web-b", "3", 3, "web:2"),
                rs("web-c", "2", 1, "web:3"),
            ],
            ..Related::default()
        };
        let text = render(deploy, &o, &related);
        for expected in [
            "Selector:               app=web\n",
            "Replicas:               3 desired | 3 updated | 3 total | 2 available | 1 unavailable\n",
            "RollingUpdateStrategy:  25% max unavailable, 25% max surge\n",
            "      Image:        web:2\n",
            "      Port:         80/TCP\n",
            // As in kubectl, the lines after the table share its first column.
            "  Available      False   MinimumReplicasUnavailable\n",
            "OldReplicaSets:  web-a (0/0 replicas created), web-c (1/1 replicas created)\n",
            "NewReplicaSet:   web-b (3/3 replicas created)\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }

    #[test]
    fn events_table() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let event: Event = serde_json::from_value(json!({
            "metadata": {"name": "e1"},
            "involvedObject": {"kind": "Pod", "name": "web"},
            "type": "Warning", "reason": "BackOff", "message": "Back-off restarting failed container",
            "count": 4, "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:09:30Z",
            "source": {"component": "kubelet"},
        }))
        .unwrap();
        let mut text = Text::default();
        events_section(&mut text, &[event], now);
        assert_eq!(
            text.finish(),
            "Events:\n\
             \x20 Type     Reason   Age                From     Message\n\
             \x20 ----     ------   ----               ----     -------\n\
             \x20 Warning  BackOff  30s (x4 over 10m)  kubelet  Back-off restarting failed container\n"
        );
        let mut empty = Text::default();
        events_section(&mut empty, &[], now);
        assert_eq!(empty.finish(), "Events:  <none>\n");
    }
}
