//! Services: addresses, ports and the endpoints behind them (EndpointSlices).

use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;

use super::text::{Text, header, or_none, scalar_text, selector_text};
use crate::output::{at, str_at};

pub fn describe_service(text: &mut Text, o: &Value, slices: &[EndpointSlice]) {
    header(text, o, true);
    text.kv(0, "Selector", selector_text(at(o, "spec.selector")));
    text.kv(0, "Type", or_none(str_at(o, "spec.type")));
    if let Some(policy) = str_at(o, "spec.ipFamilyPolicy") {
        text.kv(0, "IP Family Policy", policy);
    }
    let families: Vec<String> = at(o, "spec.ipFamilies")
        .and_then(Value::as_array)
        .map(|f| f.iter().map(scalar_text).collect())
        .unwrap_or_default();
    if !families.is_empty() {
        text.kv(0, "IP Families", families.join(","));
    }
    text.kv(0, "IP", or_none(str_at(o, "spec.clusterIP")));
    let ips: Vec<String> = at(o, "spec.clusterIPs")
        .and_then(Value::as_array)
        .map(|f| f.iter().map(scalar_text).collect())
        .unwrap_or_default();
    text.kv(
        0,
        "IPs",
        if ips.is_empty() {
            "<none>".to_owned()
        } else {
            ips.join(",")
        },
    );
    if let Some(external) = at(o, "spec.externalIPs").and_then(Value::as_array) {
        text.kv(
            0,
            "External IPs",
            external
                .iter()
                .map(scalar_text)
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    let ingress: Vec<String> = at(o, "status.loadBalancer.ingress")
        .and_then(Value::as_array)
        .map(|i| {
            i.iter()
                .filter_map(|x| x["ip"].as_str().or(x["hostname"].as_str()))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if !ingress.is_empty() {
        text.kv(0, "LoadBalancer Ingress", ingress.join(", "));
    }
    for p in at(o, "spec.ports")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let name = p["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or("<unset>");
        let proto = p["protocol"].as_str().unwrap_or("TCP");
        text.kv(0, "Port", format!("{name}  {}/{proto}", p["port"]));
        text.kv(
            0,
            "TargetPort",
            format!(
                "{}/{proto}",
                scalar_text(p.get("targetPort").unwrap_or(&p["port"]))
            ),
        );
        if let Some(node_port) = p["nodePort"].as_i64() {
            text.kv(0, "NodePort", format!("{name}  {node_port}/{proto}"));
        }
        let port_name = p["name"].as_str().unwrap_or("");
        let endpoints: Vec<String> = slices
            .iter()
            .flat_map(|s| {
                let port = s
                    .ports
                    .as_ref()
                    .and_then(|ps| {
                        ps.iter()
                            .find(|sp| sp.name.as_deref().unwrap_or("") == port_name)
                    })
                    .and_then(|sp| sp.port);
                s.endpoints
                    .iter()
                    .flatten()
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
                    .flat_map(move |e| {
                        e.addresses.iter().map(move |a| match port {
                            Some(port) => format!("{a}:{port}"),
                            None => a.clone(),
                        })
                    })
            })
            .collect();
        text.kv(
            0,
            "Endpoints",
            if endpoints.is_empty() {
                "<none>".to_owned()
            } else {
                endpoints.join(",")
            },
        );
    }
    text.kv(
        0,
        "Session Affinity",
        or_none(str_at(o, "spec.sessionAffinity")),
    );
    if let Some(policy) = str_at(o, "spec.externalTrafficPolicy") {
        text.kv(0, "External Traffic Policy", policy);
    }
    if let Some(policy) = str_at(o, "spec.internalTrafficPolicy") {
        text.kv(0, "Internal Traffic Policy", policy);
    }
}
