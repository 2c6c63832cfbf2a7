//! kube-proxy's nftables mode as a baseline: the engine's wanted state
//! ([`crate::ProxyState::desired`]) as an `nft -f` script in the shape
//! kube-proxy (1.31+) writes, in our own table `ip coxswain`.
//!
//! # Structure
//!
//! ```text
//! nat-prerouting, nat-output (nat, priority dstnat) ─▶ services:
//!     ip daddr . meta l4proto . th dport vmap @service-ips      one hash lookup
//! map service-ips { 10.96.0.10 . tcp . 80 : goto service-<hash>-ns/name/tcp/port, ... }
//! chain service-<hash>-ns/name/tcp/port
//!     [ip daddr VIP tcp dport 80 ip saddr != <cluster CIDR> jump mark-for-masquerade   (ClusterIP)]
//!     [ip saddr @affinity-<endpoint> goto endpoint-<...>, per endpoint, with ClientIP affinity]
//!     numgen random mod N vmap { 0 : goto endpoint-<hash>-ns/name/tcp/port__10.0.0.1/8080, ... }
//! chain local-<hash>-ns/name/tcp/port: the same over the node-local endpoints (`Local` policy)
//! chain endpoint-<hash>-ns/name/tcp/port__10.0.0.1/8080
//!     [ip saddr 10.0.0.1 jump mark-for-masquerade                 (hairpin)]
//!     [update @affinity-<...> { ip saddr }]
//!     meta l4proto tcp dnat to 10.0.0.1:8080
//! chain external-<...>, for NodePorts and external IPs
//!     externalTrafficPolicy: Cluster: jump mark-for-masquerade; goto service-<...>
//!     externalTrafficPolicy: Local:   [ip saddr <cluster CIDR> goto service-<...>]   (pods)
//!                                     fib saddr type local jump mark-for-masquerade
//!                                     fib saddr type local goto service-<...>        (the node)
//!                                     [goto local-<...>]          (the rest, if local endpoints)
//! filter-input, filter-forward, filter-output (priority dstnat - 10, i.e. -110):
//!     ct state new jump service-endpoints-check:
//!         ip daddr . meta l4proto . th dport vmap @no-endpoint-services
//! filter-input: ct state new jump nodeport-endpoints-check:
//!         ip daddr . meta l4proto . th dport vmap @no-endpoint-nodeports
//! map no-endpoint-services { 10.96.0.11 . tcp . 80 : goto reject-chain }   reject-chain: reject
//! map no-endpoint-nodeports { 192.168.1.10 . tcp . 30080 : goto reject-chain, ... : drop }
//! nat-postrouting (srcnat) ─▶ masquerading: masquerade what mark-for-masquerade marked
//! ```
//!
//! Chain names are kube-proxy's: `service-` + the first 8 characters of the
//! base32 of the SHA-256 of `namespace/name/protocol/port`, a dash, then
//! that string (`service-ULMVA6XW-ns1/svc1/tcp/p80`); `local-` and
//! `external-` share it; endpoints append `__ip/port`. Unlike iptables, a
//! packet costs one map lookup whatever the number of Services; loading the
//! rules is what grows.
//!
//! Under `externalTrafficPolicy: Local`, traffic is told apart by source as
//! in [`crate::iptables`] (pods by [`NftOptions::cluster_cidr`], the node by
//! `fib saddr type local`), and with no local endpoint the frontend's
//! element in `no-endpoint-nodeports` (`no-endpoint-services` for an
//! external IP) is `drop`: what the external chain did not short-circuit
//! reaches the filter hook untranslated and is dropped (the eBPF dataplane
//! refuses instead). As kube-proxy, `no-endpoint-nodeports` is checked on
//! input only, so that the node's own traffic, filtered on output before
//! it is translated, is not dropped.
//!
//! # Syncing
//!
//! [`full`] replaces the whole table in one transaction (`add table`,
//! `delete table`, then everything), for `nft -f -`. [`update`] is
//! kube-proxy's partial sync for one changed Service, from its frontends
//! before and after: new chains added, changed chains flushed and
//! rewritten, map elements replaced, stale chains flushed and deleted, all
//! in one transaction.
//!
//! What is left out is what [`crate::iptables`] leaves out (inactive
//! frontends; without a cluster CIDR, the pod-traffic rules); NodePorts
//! are map elements per node address rather than kube-proxy's
//! `service-nodeports` map behind `fib daddr type local`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use coxswain_ebpf_common::service_flags;

use crate::FrontendKind;
use crate::iptables::{Ipv4Cidr, PortGroup, base32, port_groups, same_backends, sha256};
use crate::view::{BackendView, FrontendView};

/// The table (family `ip`).
pub const TABLE: &str = "coxswain";
/// The verdict map of frontends with endpoints.
pub const SERVICE_IPS_MAP: &str = "service-ips";
/// The verdict map of ClusterIPs and external IPs without endpoints.
pub const NO_ENDPOINT_MAP: &str = "no-endpoint-services";
/// The verdict map of NodePorts without endpoints (or without local ones
/// under `externalTrafficPolicy: Local`), checked on input only.
pub const NO_ENDPOINT_NODEPORTS_MAP: &str = "no-endpoint-nodeports";
/// The mark `mark-for-masquerade` sets.
pub const MASQ_MARK: &str = "0x4000";
/// kube-proxy's bound on a chain name's base (`NameLengthMax` less the
/// longest prefix, `external-`).
const CHAIN_BASE_MAX: usize = 256 - "external-".len();

/// Choices kube-proxy makes by flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NftOptions {
    /// Mark traffic from an endpoint to its own Service for masquerading
    /// (one more rule per endpoint chain), as kube-proxy always does.
    pub masquerade_hairpin: bool,
    /// The sources that are pods, as [`crate::iptables::IptablesOptions::cluster_cidr`].
    pub cluster_cidr: Option<Ipv4Cidr>,
}

impl Default for NftOptions {
    fn default() -> Self {
        Self {
            masquerade_hairpin: true,
            cluster_cidr: None,
        }
    }
}

/// The table's fixed part: maps, base chains and helper chains. Priorities
/// are numbers (dstnat = -100, srcnat = 100): nft 1.0.6 accepts the names
/// only on some hooks.
const STATIC: &str = "add map ip coxswain service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP, NodePort and LoadBalancer IP traffic\" ; }
add map ip coxswain no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"Services without endpoints\" ; }
add map ip coxswain no-endpoint-nodeports { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"NodePorts without (local) endpoints\" ; }
add chain ip coxswain nat-prerouting { type nat hook prerouting priority -100 ; }
add chain ip coxswain nat-output { type nat hook output priority -100 ; }
add chain ip coxswain nat-postrouting { type nat hook postrouting priority 100 ; }
add chain ip coxswain filter-input { type filter hook input priority -110 ; }
add chain ip coxswain filter-forward { type filter hook forward priority -110 ; }
add chain ip coxswain filter-output { type filter hook output priority -110 ; }
add chain ip coxswain services
add chain ip coxswain service-endpoints-check
add chain ip coxswain nodeport-endpoints-check
add chain ip coxswain mark-for-masquerade
add chain ip coxswain masquerading
add chain ip coxswain reject-chain
add rule ip coxswain nat-prerouting jump services
add rule ip coxswain nat-output jump services
add rule ip coxswain nat-postrouting jump masquerading
add rule ip coxswain filter-input ct state new jump nodeport-endpoints-check
add rule ip coxswain filter-input ct state new jump service-endpoints-check
add rule ip coxswain filter-forward ct state new jump service-endpoints-check
add rule ip coxswain filter-output ct state new jump service-endpoints-check
add rule ip coxswain services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip coxswain service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add rule ip coxswain nodeport-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-nodeports
add rule ip coxswain mark-for-masquerade mark set mark or 0x4000
add rule ip coxswain masquerading mark and 0x4000 == 0 return
add rule ip coxswain masquerading mark set mark xor 0x4000
add rule ip coxswain masquerading masquerade fully-random
add rule ip coxswain reject-chain reject
";

/// The full ruleset for `nft -f -`: replaces table `ip coxswain` atomically.
pub fn full(frontends: &[FrontendView], options: &NftOptions) -> String {
    let plan = Plan::of(frontends, options);
    let mut out = String::with_capacity(256 * frontends.len() * 12 + STATIC.len());
    // `add` then `delete`: works whether or not the table exists.
    out.push_str("add table ip coxswain\ndelete table ip coxswain\n");
    out.push_str("add table ip coxswain { comment \"kube-proxy-style baseline\" ; }\n");
    out.push_str(STATIC);
    for chain in plan.chains.keys() {
        let _ = writeln!(out, "add chain ip {TABLE} {chain}");
    }
    for (set, timeout) in &plan.sets {
        add_set(&mut out, set, *timeout);
    }
    for (chain, rules) in &plan.chains {
        for rule in rules {
            let _ = writeln!(out, "add rule ip {TABLE} {chain} {rule}");
        }
    }
    add_elements(&mut out, SERVICE_IPS_MAP, plan.service_ips.iter());
    add_elements(&mut out, NO_ENDPOINT_MAP, plan.no_endpoint.iter());
    add_elements(
        &mut out,
        NO_ENDPOINT_NODEPORTS_MAP,
        plan.no_endpoint_nodeports.iter(),
    );
    out
}

/// kube-proxy's partial sync of one Service: `before` and `after` are its
/// frontends (e.g. [`crate::ProxyState::service_frontends`] around the
/// change). The script expects the table as [`full`] (and earlier
/// updates) left it, and leaves it as [`full`] of the new state would, but
/// for a changed affinity timeout: nft cannot change a set's timeout in
/// place, so existing affinity sets keep theirs until a full sync.
pub fn update(before: &[FrontendView], after: &[FrontendView], options: &NftOptions) -> String {
    let old = Plan::of(before, options);
    let new = Plan::of(after, options);
    let mut out = String::new();
    for chain in new.chains.keys().filter(|c| !old.chains.contains_key(*c)) {
        let _ = writeln!(out, "add chain ip {TABLE} {chain}");
    }
    for (set, timeout) in new.sets.iter().filter(|(s, _)| !old.sets.contains_key(*s)) {
        add_set(&mut out, set, *timeout);
    }
    for (chain, rules) in &new.chains {
        match old.chains.get(chain) {
            Some(old_rules) if old_rules == rules => continue,
            Some(_) => {
                let _ = writeln!(out, "flush chain ip {TABLE} {chain}");
            }
            None => {}
        }
        for rule in rules {
            let _ = writeln!(out, "add rule ip {TABLE} {chain} {rule}");
        }
    }
    for (map, old_elements, new_elements) in [
        (SERVICE_IPS_MAP, &old.service_ips, &new.service_ips),
        (NO_ENDPOINT_MAP, &old.no_endpoint, &new.no_endpoint),
        (
            NO_ENDPOINT_NODEPORTS_MAP,
            &old.no_endpoint_nodeports,
            &new.no_endpoint_nodeports,
        ),
    ] {
        let stale: Vec<&String> = old_elements
            .iter()
            .filter(|(key, element)| new_elements.get(*key) != Some(*element))
            .map(|(key, _)| key)
            .collect();
        if !stale.is_empty() {
            let keys: Vec<&str> = stale.iter().map(|k| k.as_str()).collect();
            let _ = writeln!(
                out,
                "delete element ip {TABLE} {map} {{ {} }}",
                keys.join(", ")
            );
        }
        add_elements(
            &mut out,
            map,
            new_elements
                .iter()
                .filter(|(key, element)| old_elements.get(*key) != Some(*element)),
        );
    }
    let stale_chains: Vec<&String> = old
        .chains
        .keys()
        .filter(|c| !new.chains.contains_key(*c))
        .collect();
    for chain in &stale_chains {
        let _ = writeln!(out, "flush chain ip {TABLE} {chain}");
    }
    for chain in &stale_chains {
        let _ = writeln!(out, "delete chain ip {TABLE} {chain}");
    }
    for set in old.sets.keys().filter(|s| !new.sets.contains_key(*s)) {
        let _ = writeln!(out, "delete set ip {TABLE} {set}");
    }
    out
}

/// What a set of frontends becomes in the table, beyond the fixed part.
#[derive(Debug, Default)]
struct Plan {
    /// Service, external and endpoint chains with their rules.
    chains: BTreeMap<String, Vec<String>>,
    /// Affinity sets and their timeouts (seconds).
    sets: BTreeMap<String, u32>,
    /// `addr . proto . port` → `comment "..." : goto chain`.
    service_ips: BTreeMap<String, String>,
    /// `addr . proto . port` → `comment "..." : goto reject-chain` (or
    /// `drop`, for an external IP without local endpoints).
    no_endpoint: BTreeMap<String, String>,
    /// The same for NodePorts.
    no_endpoint_nodeports: BTreeMap<String, String>,
}

impl Plan {
    fn of(frontends: &[FrontendView], options: &NftOptions) -> Self {
        let mut plan = Plan::default();
        for group in port_groups(frontends) {
            plan.add_group(&group, options);
        }
        plan
    }

    fn add_group(&mut self, group: &PortGroup<'_>, options: &NftOptions) {
        let proto = group.protocol.as_str().to_ascii_lowercase();
        let spn = group.port_name_string();
        let base = format!(
            "{}/{}/{proto}/{}",
            group.service.namespace, group.service.name, group.port_name
        );
        let port = PortNames {
            group,
            proto: &proto,
            base: &base,
            options,
        };
        let local_name = format!("local-{}", hash_and_truncate(&base));
        // externalTrafficPolicy: Local. The node-local endpoints' chain,
        // unless there are none (an internalTrafficPolicy: Local ClusterIP
        // with the same list writes it anyway).
        let local_chain = group
            .local
            .as_ref()
            .filter(|local| !local.backends.is_empty())
            .map(|local| {
                let written = group
                    .variants
                    .get(1)
                    .is_some_and(|v| same_backends(v.backends, local.backends));
                if !written {
                    self.policy_chain(&port, &local_name, local.backends, &[]);
                }
                local_name.clone()
            });
        for (index, variant) in group.variants.iter().enumerate() {
            let variant_base = match index {
                0 => hash_and_truncate(&base),
                n => hash_and_truncate(&format!("{base}/{n}")),
            };
            if variant.backends.is_empty() {
                for frontend in &variant.frontends {
                    self.no_endpoint_map(frontend.kind).insert(
                        element_key(frontend),
                        format!("comment \"{spn}\" : goto reject-chain"),
                    );
                }
                continue;
            }
            // kube-proxy's `local-` chain is the node-local list.
            let service_chain = match index {
                1 => local_name.clone(),
                _ => format!("service-{variant_base}"),
            };
            self.policy_chain(&port, &service_chain, variant.backends, &variant.frontends);
            let mut external = None;
            for frontend in &variant.frontends {
                let local_policy = group.has_local_twin(frontend);
                let snat = frontend.flags & service_flags::SNAT != 0;
                let target = if local_policy || snat {
                    external
                        .get_or_insert_with(|| {
                            let chain = format!("external-{variant_base}");
                            let rules = if local_policy {
                                local_external_rules(
                                    options,
                                    &service_chain,
                                    local_chain.as_deref(),
                                )
                            } else {
                                vec![
                                    "jump mark-for-masquerade".to_owned(),
                                    format!("goto {service_chain}"),
                                ]
                            };
                            self.chains.insert(chain.clone(), rules);
                            chain
                        })
                        .clone()
                } else {
                    service_chain.clone()
                };
                self.service_ips.insert(
                    element_key(frontend),
                    format!("comment \"{spn}\" : goto {target}"),
                );
                if local_policy && local_chain.is_none() {
                    self.no_endpoint_map(frontend.kind)
                        .insert(element_key(frontend), format!("comment \"{spn}\" : drop"));
                }
            }
        }
    }

    /// Where `kind`'s frontends without (usable) endpoints go: kube-proxy's
    /// `no-endpoint-nodeports` for NodePorts, `no-endpoint-services` else.
    fn no_endpoint_map(&mut self, kind: FrontendKind) -> &mut BTreeMap<String, String> {
        match kind {
            FrontendKind::NodePort => &mut self.no_endpoint_nodeports,
            FrontendKind::ClusterIp | FrontendKind::External => &mut self.no_endpoint,
        }
    }

    /// A policy chain (`service-`, `local-`) choosing among `backends`, and
    /// their endpoint chains. With a cluster CIDR, ClusterIP traffic among
    /// `frontends` from outside it is masqueraded first.
    fn policy_chain(
        &mut self,
        port: &PortNames<'_>,
        chain: &str,
        backends: &[BackendView],
        frontends: &[&FrontendView],
    ) {
        let proto = port.proto;
        let endpoints: Vec<(String, String, &BackendView)> = backends
            .iter()
            .map(|b| {
                let name = hash_and_truncate(&format!("{}__{}/{}", port.base, b.addr, b.port));
                (format!("endpoint-{name}"), format!("affinity-{name}"), b)
            })
            .collect();
        let mut rules = Vec::new();
        if let Some(cidr) = port.options.cluster_cidr {
            for frontend in frontends
                .iter()
                .filter(|f| f.kind == FrontendKind::ClusterIp)
            {
                rules.push(format!(
                    "ip daddr {} {proto} dport {} ip saddr != {cidr} jump mark-for-masquerade",
                    frontend.addr, frontend.port
                ));
            }
        }
        if let Some(timeout) = port.group.affinity_timeout_s {
            for (chain, set, _) in &endpoints {
                self.sets.insert(set.clone(), timeout);
                rules.push(format!("ip saddr @{set} goto {chain}"));
            }
        }
        let vmap: Vec<String> = endpoints
            .iter()
            .enumerate()
            .map(|(i, (chain, _, _))| format!("{i} : goto {chain}"))
            .collect();
        rules.push(format!(
            "numgen random mod {} vmap {{ {} }}",
            endpoints.len(),
            vmap.join(", ")
        ));
        self.chains.insert(chain.to_owned(), rules);
        // A port's policy chains share their endpoints' chains.
        for (chain, set, b) in &endpoints {
            let mut rules = Vec::new();
            if port.options.masquerade_hairpin {
                rules.push(format!("ip saddr {} jump mark-for-masquerade", b.addr));
            }
            if port.group.affinity_timeout_s.is_some() {
                rules.push(format!("update @{set} {{ ip saddr }}"));
            }
            rules.push(format!(
                "meta l4proto {proto} dnat to {}:{}",
                b.addr, b.port
            ));
            self.chains.insert(chain.clone(), rules);
        }
    }
}

/// One Service port, with what its chains depend on.
struct PortNames<'a> {
    group: &'a PortGroup<'a>,
    proto: &'a str,
    /// `namespace/name/protocol/port`.
    base: &'a str,
    options: &'a NftOptions,
}

/// The external chain under `externalTrafficPolicy: Local`: pods and the
/// node itself reach every endpoint (`service_chain`; the node
/// masqueraded), the rest only the local ones (`local_chain`; with none,
/// nothing: the filter hook drops it).
fn local_external_rules(
    options: &NftOptions,
    service_chain: &str,
    local_chain: Option<&str>,
) -> Vec<String> {
    let mut rules = Vec::new();
    if let Some(cidr) = options.cluster_cidr {
        rules.push(format!(
            "ip saddr {cidr} goto {service_chain} comment \"short-circuit pod traffic\""
        ));
    }
    rules.push(
        "fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\""
            .to_owned(),
    );
    rules.push(format!(
        "fib saddr type local goto {service_chain} comment \"short-circuit local traffic\""
    ));
    if let Some(local_chain) = local_chain {
        rules.push(format!("goto {local_chain}"));
    }
    rules
}

fn add_set(out: &mut String, set: &str, timeout: u32) {
    let _ = writeln!(
        out,
        "add set ip {TABLE} {set} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s ; }}"
    );
}

/// One `add element` statement for all of `elements` (none: nothing).
fn add_elements<'a>(
    out: &mut String,
    map: &str,
    elements: impl Iterator<Item = (&'a String, &'a String)>,
) {
    let mut first = true;
    for (key, value) in elements {
        if first {
            let _ = write!(out, "add element ip {TABLE} {map} {{ ");
            first = false;
        } else {
            out.push_str(", ");
        }
        let _ = write!(out, "{key} {value}");
    }
    if !first {
        out.push_str(" }\n");
    }
}

/// `10.96.0.10 . tcp . 80`.
fn element_key(frontend: &FrontendView) -> String {
    format!(
        "{} . {} . {}",
        frontend.addr,
        frontend.protocol.as_str().to_ascii_lowercase(),
        frontend.port
    )
}

/// kube-proxy's `hashAndTruncate`: 8 characters of hash, a dash, the name,
/// cut to fit a chain name.
fn hash_and_truncate(name: &str) -> String {
    let hash = base32(&sha256(name.as_bytes()));
    let mut out = format!("{}-{name}", &hash[..8]);
    if out.len() > CHAIN_BASE_MAX {
        // Names are ASCII (namespace, name, protocol, port, address).
        out.truncate(CHAIN_BASE_MAX - 3);
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::FrontendKind;
    use crate::iptables::tests::{backend, cluster_ip, local_policy, node_ports};
    use crate::keys::Protocol;

    fn svc1(backends: Vec<BackendView>) -> FrontendView {
        cluster_ip(
            ("ns1", "svc1"),
            "p80",
            "172.30.0.41",
            80,
            Protocol::Tcp,
            backends,
        )
    }

    /// Lines of `script` after the fixed part.
    fn dynamic(script: &str) -> Vec<&str> {
        let skip = 3 + STATIC.lines().count();
        script.lines().skip(skip).collect()
    }

    #[test]
    fn one_service_with_two_endpoints_reads_like_kube_proxy() {
        let script = full(
            &[svc1(vec![
                backend("10.180.0.1", 80),
                backend("10.180.0.2", 80),
            ])],
            &NftOptions::default(),
        );
        assert!(
            script.starts_with(
                "add table ip coxswain\ndelete table ip coxswain\nadd table ip coxswain"
            )
        );
        assert_eq!(
            dynamic(&script),
            [
                "add chain ip coxswain endpoint-2ZNDXFAB-ns1/svc1/tcp/p80__10.180.0.2/80",
                "add chain ip coxswain endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80",
                "add chain ip coxswain service-ULMVA6XW-ns1/svc1/tcp/p80",
                "add rule ip coxswain endpoint-2ZNDXFAB-ns1/svc1/tcp/p80__10.180.0.2/80 ip saddr 10.180.0.2 jump mark-for-masquerade",
                "add rule ip coxswain endpoint-2ZNDXFAB-ns1/svc1/tcp/p80__10.180.0.2/80 meta l4proto tcp dnat to 10.180.0.2:80",
                "add rule ip coxswain endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 jump mark-for-masquerade",
                "add rule ip coxswain endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80",
                "add rule ip coxswain service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 2 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80, 1 : goto endpoint-2ZNDXFAB-ns1/svc1/tcp/p80__10.180.0.2/80 }",
                "add element ip coxswain service-ips { 172.30.0.41 . tcp . 80 comment \"ns1/svc1:p80\" : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }",
            ]
        );
    }

    #[test]
    fn services_without_endpoints_go_to_the_reject_map() {
        let frontend = cluster_ip(
            ("ns2", "svc2"),
            "",
            "172.30.0.42",
            53,
            Protocol::Udp,
            vec![],
        );
        let script = full(&[frontend], &NftOptions::default());
        assert_eq!(
            dynamic(&script),
            [
                "add element ip coxswain no-endpoint-services { 172.30.0.42 . udp . 53 comment \"ns2/svc2\" : goto reject-chain }"
            ]
        );
    }

    #[test]
    fn affinity_sets_are_checked_in_the_service_chain_and_updated_per_endpoint() {
        let mut frontend = svc1(vec![backend("10.180.0.1", 80)]);
        frontend.affinity_timeout_s = Some(10_800);
        let script = full(
            &[frontend],
            &NftOptions {
                masquerade_hairpin: false,
                ..NftOptions::default()
            },
        );
        for line in [
            "add set ip coxswain affinity-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 { type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }",
            "add rule ip coxswain service-ULMVA6XW-ns1/svc1/tcp/p80 ip saddr @affinity-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80",
            "add rule ip coxswain endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 update @affinity-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 { ip saddr }",
        ] {
            assert!(
                script.lines().any(|l| l == line),
                "missing {line}\n{script}"
            );
        }
    }

    #[test]
    fn snat_frontends_go_through_an_external_chain() {
        let cluster = svc1(vec![backend("10.180.0.1", 80)]);
        let node_port = FrontendView {
            kind: FrontendKind::NodePort,
            addr: Ipv4Addr::new(192, 168, 1, 10),
            port: 30080,
            flags: service_flags::NODE_PORT | service_flags::SNAT,
            ..cluster.clone()
        };
        let script = full(&[cluster, node_port], &NftOptions::default());
        for line in [
            "add rule ip coxswain external-ULMVA6XW-ns1/svc1/tcp/p80 jump mark-for-masquerade",
            "add rule ip coxswain external-ULMVA6XW-ns1/svc1/tcp/p80 goto service-ULMVA6XW-ns1/svc1/tcp/p80",
            "add element ip coxswain service-ips { 172.30.0.41 . tcp . 80 comment \"ns1/svc1:p80\" : goto service-ULMVA6XW-ns1/svc1/tcp/p80, 192.168.1.10 . tcp . 30080 comment \"ns1/svc1:p80\" : goto external-ULMVA6XW-ns1/svc1/tcp/p80 }",
        ] {
            assert!(
                script.lines().any(|l| l == line),
                "missing {line}\n{script}"
            );
        }
    }

    /// Partial syncs of one Service, as a table of before, after and the
    /// script.
    #[test]
    fn updates_touch_only_what_changed() {
        let e1 = backend("10.180.0.1", 80);
        let e2 = backend("10.180.0.2", 80);
        let none = |f: FrontendView| FrontendView {
            backends: vec![],
            ..f
        };
        const S: &str = "service-ULMVA6XW-ns1/svc1/tcp/p80";
        const E1: &str = "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80";
        const E2: &str = "endpoint-2ZNDXFAB-ns1/svc1/tcp/p80__10.180.0.2/80";
        type Case = (
            &'static str,
            Vec<FrontendView>,
            Vec<FrontendView>,
            Vec<String>,
        );
        let table: Vec<Case> = vec![
            (
                "unchanged: nothing",
                vec![svc1(vec![e1, e2])],
                vec![svc1(vec![e1, e2])],
                vec![],
            ),
            (
                "an endpoint leaves: service chain rewritten, its chain deleted",
                vec![svc1(vec![e1, e2])],
                vec![svc1(vec![e1])],
                vec![
                    format!("flush chain ip coxswain {S}"),
                    format!("add rule ip coxswain {S} numgen random mod 1 vmap {{ 0 : goto {E1} }}"),
                    format!("flush chain ip coxswain {E2}"),
                    format!("delete chain ip coxswain {E2}"),
                ],
            ),
            (
                "an endpoint joins: its chain added first",
                vec![svc1(vec![e1])],
                vec![svc1(vec![e1, e2])],
                vec![
                    format!("add chain ip coxswain {E2}"),
                    format!("add rule ip coxswain {E2} ip saddr 10.180.0.2 jump mark-for-masquerade"),
                    format!("add rule ip coxswain {E2} meta l4proto tcp dnat to 10.180.0.2:80"),
                    format!("flush chain ip coxswain {S}"),
                    format!("add rule ip coxswain {S} numgen random mod 2 vmap {{ 0 : goto {E1}, 1 : goto {E2} }}"),
                ],
            ),
            (
                "the last endpoint leaves: element moves to the reject map",
                vec![svc1(vec![e1])],
                vec![none(svc1(vec![]))],
                vec![
                    "delete element ip coxswain service-ips { 172.30.0.41 . tcp . 80 }".to_owned(),
                    "add element ip coxswain no-endpoint-services { 172.30.0.41 . tcp . 80 comment \"ns1/svc1:p80\" : goto reject-chain }".to_owned(),
                    format!("flush chain ip coxswain {E1}"),
                    format!("flush chain ip coxswain {S}"),
                    format!("delete chain ip coxswain {E1}"),
                    format!("delete chain ip coxswain {S}"),
                ],
            ),
            (
                "the Service appears",
                vec![],
                vec![svc1(vec![e1])],
                vec![
                    format!("add chain ip coxswain {E1}"),
                    format!("add chain ip coxswain {S}"),
                    format!("add rule ip coxswain {E1} ip saddr 10.180.0.1 jump mark-for-masquerade"),
                    format!("add rule ip coxswain {E1} meta l4proto tcp dnat to 10.180.0.1:80"),
                    format!("add rule ip coxswain {S} numgen random mod 1 vmap {{ 0 : goto {E1} }}"),
                    format!("add element ip coxswain service-ips {{ 172.30.0.41 . tcp . 80 comment \"ns1/svc1:p80\" : goto {S} }}"),
                ],
            ),
        ];
        for (name, before, after, want) in table {
            let got = update(&before, &after, &NftOptions::default());
            assert_eq!(got.lines().collect::<Vec<_>>(), want, "{name}");
        }
    }

    #[test]
    fn long_names_are_cut_with_their_hash_kept() {
        let long = "n".repeat(63);
        let name = hash_and_truncate(&format!("{long}/{long}/tcp/{long}__10.0.0.1/80/{long}"));
        assert_eq!(name.len(), CHAIN_BASE_MAX);
        assert!(name.ends_with("..."));
        assert_eq!(name.as_bytes()[8], b'-');
    }

    const SERVICE: &str = "service-ULMVA6XW-ns1/svc1/tcp/p80";
    const LOCAL: &str = "local-ULMVA6XW-ns1/svc1/tcp/p80";
    const EXTERNAL: &str = "external-ULMVA6XW-ns1/svc1/tcp/p80";

    /// Rules of `chain` in `script`.
    fn rules_of<'a>(script: &'a str, chain: &str) -> Vec<&'a str> {
        let prefix = format!("add rule ip coxswain {chain} ");
        script
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect()
    }

    /// kube-proxy's `external-` and `local-` chains for
    /// `externalTrafficPolicy: Local`.
    #[test]
    fn local_policy_tells_sources_apart_like_kube_proxy() {
        let options = NftOptions {
            cluster_cidr: Some("10.180.0.0/16".parse().unwrap()),
            ..NftOptions::default()
        };
        let script = full(&local_policy(vec![backend("10.180.0.1", 80)]), &options);
        assert_eq!(
            rules_of(&script, EXTERNAL),
            [
                format!("ip saddr 10.180.0.0/16 goto {SERVICE} comment \"short-circuit pod traffic\""),
                "fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\"".to_owned(),
                format!("fib saddr type local goto {SERVICE} comment \"short-circuit local traffic\""),
                format!("goto {LOCAL}"),
            ],
            "{script}"
        );
        assert_eq!(
            rules_of(&script, LOCAL),
            [
                "numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }"
            ]
        );
        assert_eq!(
            rules_of(&script, SERVICE)[0],
            "ip daddr 172.30.0.41 tcp dport 80 ip saddr != 10.180.0.0/16 jump mark-for-masquerade"
        );
        assert!(
            script.lines().any(|l| l == format!("add element ip coxswain service-ips {{ 172.30.0.41 . tcp . 80 comment \"ns1/svc1:p80\" : goto {SERVICE}, 192.168.1.10 . tcp . 30080 comment \"ns1/svc1:p80\" : goto {EXTERNAL} }}")),
            "{script}"
        );
        assert!(!script.contains(": drop"), "{script}");
    }

    #[test]
    fn local_policy_without_a_local_endpoint_drops_nodeport_traffic_on_input() {
        let script = full(&local_policy(vec![]), &NftOptions::default());
        assert_eq!(
            rules_of(&script, EXTERNAL),
            [
                "fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\"".to_owned(),
                format!("fib saddr type local goto {SERVICE} comment \"short-circuit local traffic\""),
            ]
        );
        assert!(!script.contains(LOCAL), "{script}");
        assert!(
            script.lines().any(|l| l == "add element ip coxswain no-endpoint-nodeports { 192.168.1.10 . tcp . 30080 comment \"ns1/svc1:p80\" : drop }"),
            "{script}"
        );
        assert!(
            !script.contains("add element ip coxswain no-endpoint-services"),
            "{script}"
        );
    }

    #[test]
    fn nodeports_without_endpoints_are_rejected_on_input() {
        let cluster = svc1(vec![]);
        for local in [None, Some(vec![])] {
            let mut frontends = node_ports(&cluster, "192.168.1.10", 30080, local.clone());
            frontends.push(cluster.clone());
            let script = full(&frontends, &NftOptions::default());
            assert_eq!(
                dynamic(&script),
                [
                    "add element ip coxswain no-endpoint-services { 172.30.0.41 . tcp . 80 comment \"ns1/svc1:p80\" : goto reject-chain }",
                    "add element ip coxswain no-endpoint-nodeports { 192.168.1.10 . tcp . 30080 comment \"ns1/svc1:p80\" : goto reject-chain }",
                ],
                "local: {local:?}"
            );
        }
    }

    /// The last local endpoint leaving is a partial sync like any other.
    #[test]
    fn updates_follow_the_local_endpoints() {
        let one = local_policy(vec![backend("10.180.0.1", 80)]);
        let none = local_policy(vec![]);
        let got = update(&one, &none, &NftOptions::default());
        assert_eq!(
            got.lines().collect::<Vec<_>>(),
            [
                format!("flush chain ip coxswain {EXTERNAL}"),
                "add rule ip coxswain external-ULMVA6XW-ns1/svc1/tcp/p80 fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\"".to_owned(),
                format!("add rule ip coxswain {EXTERNAL} fib saddr type local goto {SERVICE} comment \"short-circuit local traffic\""),
                "add element ip coxswain no-endpoint-nodeports { 192.168.1.10 . tcp . 30080 comment \"ns1/svc1:p80\" : drop }".to_owned(),
                format!("flush chain ip coxswain {LOCAL}"),
                format!("delete chain ip coxswain {LOCAL}"),
            ]
        );
        let back = update(&none, &one, &NftOptions::default());
        assert!(
            back.lines().any(|l| l == "delete element ip coxswain no-endpoint-nodeports { 192.168.1.10 . tcp . 30080 }"),
            "{back}"
        );
        assert!(back.contains(&format!("goto {LOCAL}")), "{back}");
    }
}
