//! kube-proxy's iptables mode as a baseline: the engine's wanted state
//! ([`crate::ProxyState::desired`]) rendered as one `iptables-restore` input
//! in the shape kube-proxy writes, so that benchmarks and tests compare the
//! eBPF dataplane with what clusters run today on the same Services.
//!
//! # Structure
//!
//! ```text
//! nat    PREROUTING, OUTPUT ─▶ COX-SERVICES          one rule per frontend (linear walk!)
//!          COX-SERVICES  -d VIP -p tcp --dport 80 ─▶ COX-SVC-<hash>        (or COX-EXT-<hash>
//!                                                                            for external frontends
//!                                                                            wanting SNAT or under
//!                                                                            externalTrafficPolicy: Local)
//!          COX-SVC-<hash>  [-d VIP ! -s <cluster CIDR> ─▶ COX-MARK-MASQ   (ClusterIP, with a cluster CIDR)]
//!                          [-m recent --rcheck ─▶ SEP, per endpoint, with ClientIP affinity]
//!                          -m statistic --probability 1/n   ─▶ COX-SEP-<hash 1>
//!                          -m statistic --probability 1/(n-1) ─▶ COX-SEP-<hash 2>
//!                          ...                               ─▶ COX-SEP-<hash n>
//!          COX-SVL-<hash>  the same over the node-local endpoints (a `Local` traffic policy)
//!          COX-SEP-<hash>  [-s <endpoint> ─▶ COX-MARK-MASQ   (hairpin)]
//!                          -p tcp -m tcp -j DNAT --to-destination ip:port
//!          COX-EXT-<hash>  externalTrafficPolicy: Cluster     externalTrafficPolicy: Local
//!                          ─▶ COX-MARK-MASQ                    [-s <cluster CIDR> ─▶ COX-SVC  (pods)]
//!                          ─▶ COX-SVC-<hash>                   --src-type LOCAL ─▶ COX-MARK-MASQ
//!                                                              --src-type LOCAL ─▶ COX-SVC  (the node)
//!                                                              [─▶ COX-SVL-<hash>  (the rest, if local endpoints)]
//!        POSTROUTING ─▶ COX-POSTROUTING: masquerade what COX-MARK-MASQ marked (0x4000)
//! filter INPUT, FORWARD, OUTPUT (ctstate NEW) ─▶ COX-SERVICES-FILTER:
//!          -d VIP -p tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
//!          for every ClusterIP without endpoints
//!        INPUT, FORWARD (ctstate NEW) ─▶ COX-EXTERNAL-SERVICES:
//!          the same REJECT for every NodePort and external IP without endpoints, and
//!          -d <node> -p tcp --dport 30080 -j DROP for those under
//!          externalTrafficPolicy: Local without a local endpoint
//! ```
//!
//! A ClusterIP with 10 endpoints is 21 rules (1 + 10 + 10), 31 with hairpin
//! masquerading, 22 with a cluster CIDR. Chain names are kube-proxy's
//! exactly, with `COX` for `KUBE`: the first 16 characters of the base32 of
//! the SHA-256 of
//! `namespace/name:port` + protocol (+ `ip:port` for an endpoint), so
//! `ns1/svc1:p80` over TCP is `COX-SVC-XPGD46QRK7WJZT7O` as it is
//! `KUBE-SVC-XPGD46QRK7WJZT7O` in kube-proxy.
//!
//! # External traffic
//!
//! A NodePort (matched per node address, rather than kube-proxy's `-m
//! addrtype --dst-type LOCAL` in `KUBE-NODEPORTS`) or external IP under
//! `externalTrafficPolicy: Cluster` goes through `COX-EXT`, which marks it
//! for masquerading, whatever its source, and on to the Service's
//! endpoints: a pod on this node sees the address of the node's interface
//! towards it, one on another node this node's address. That is 1 rule in
//! `COX-SERVICES` per frontend and 2 in `COX-EXT`.
//!
//! Under `externalTrafficPolicy: Local` (the engine's frontends of
//! [`Scope::Local`], with the node-local endpoints, beside their
//! [`Scope::All`] twins with all of them), `COX-EXT` tells traffic apart
//! by source as kube-proxy does: from a pod ([`IptablesOptions::cluster_cidr`])
//! or from the node itself (`-m addrtype --src-type LOCAL`, masqueraded, as
//! the node's address is the likely source), it goes to every endpoint
//! (`COX-SVC`); everything else goes to the local endpoints (`COX-SVL`),
//! unmasqueraded, so the endpoint sees the client's own address. With no
//! local endpoint, that fall-through rule is absent and a `DROP` in
//! `COX-EXTERNAL-SERVICES` (`"ns/name:port has no local endpoints"`)
//! discards such traffic once it reaches the filter table untranslated:
//! clients see a timeout. (The eBPF dataplane refuses instead, with an ICMP
//! port-unreachable, as for a Service without endpoints.)
//!
//! So `Local` costs a few rules more than `Cluster`: `COX-EXT` is 3 rules
//! instead of 2 (4 with a cluster CIDR), and `COX-SVL` one per local
//! endpoint (whose endpoint chains are `COX-SVC`'s). A NodePort Service
//! with 10 endpoints, 3 of them local, on one node address, without hairpin
//! masquerading, is 24 rules under `Cluster` (2 in `COX-SERVICES`, 2 in
//! `COX-EXT`, 10 + 10) and 28 under `Local`; a cluster CIDR adds one rule
//! to `COX-EXT` under `Local` and one to `COX-SVC` (the ClusterIP's
//! masquerading) under either. With no local endpoint, `COX-EXT` keeps its
//! first 2 (3) rules and each external frontend gets its `DROP`.
//!
//! # Syncing
//!
//! A sync is one `iptables-restore` of [`IptablesRuleset::restore`]; this is
//! kube-proxy's full sync, which rewrites every Service for any change.
//! Sharing the tables ([`IptablesOptions::shared_tables`], kube-proxy's
//! way), the restore runs with `--noflush`: each of our chains is declared
//! (which flushes it) and rewritten, chains of the previous sync that are
//! no longer wanted are deleted, nobody else's rules are touched, and the
//! rules in built-in chains that lead into ours ([`JUMP_RULES`]) are
//! ensured separately (`iptables -C`, else `-I`). Owning the tables (a
//! node namespace of our own), the restore replaces the `nat` and `filter`
//! tables whole, jump rules included, which iptables' nf_tables backend
//! does ten times faster.
//!
//! # What is not modelled
//!
//! NodePorts are matched per node address rather than with `-m addrtype
//! --dst-type LOCAL`, so there are no localhost NodePorts. Without a
//! cluster CIDR (kube-proxy's default without `--cluster-cidr`), pod
//! traffic is not told apart: ClusterIP traffic from outside the cluster
//! is not masqueraded, and pods reach an external frontend under a `Local`
//! policy as outside clients do (local endpoints only). Frontends another
//! Service owns (`active == false`) are skipped, as the engine skips them;
//! a `Local` frontend whose cluster-wide twin is skipped is skipped too.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::FrontendKind;
use crate::keys::{Protocol, Scope};
use crate::model::ObjectRef;
use crate::view::{BackendView, FrontendView};
use coxswain_ebpf_common::service_flags;

/// Entry chain (nat): every frontend's match.
pub const SERVICES_CHAIN: &str = "COX-SERVICES";
/// Filter chain rejecting ClusterIPs without endpoints.
pub const SERVICES_FILTER_CHAIN: &str = "COX-SERVICES-FILTER";
/// Filter chain rejecting external frontends without endpoints, and
/// dropping outside traffic to those without a local endpoint under
/// `externalTrafficPolicy: Local` (kube-proxy's `KUBE-EXTERNAL-SERVICES`).
pub const EXTERNAL_SERVICES_CHAIN: &str = "COX-EXTERNAL-SERVICES";
/// Marks a connection for masquerading.
pub const MARK_MASQ_CHAIN: &str = "COX-MARK-MASQ";
/// Masquerades marked connections.
pub const POSTROUTING_CHAIN: &str = "COX-POSTROUTING";
/// The bit [`MARK_MASQ_CHAIN`] sets, as kube-proxy's default.
pub const MASQ_MARK: &str = "0x4000";
/// Above this many endpoints, rules in Service and endpoint chains carry no
/// comments (kube-proxy's "large cluster mode", which saves restore time).
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// A rule in a built-in chain that leads into one of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JumpRule {
    /// `nat` or `filter`.
    pub table: &'static str,
    /// The built-in chain.
    pub chain: &'static str,
    /// The rule after the chain name, ending with `-j <our chain>`.
    pub rule: &'static [&'static str],
    /// Our chain it jumps to (create it with `-N` before checking the rule).
    pub target: &'static str,
}

const PORTALS: &[&str] = &[
    "-m",
    "comment",
    "--comment",
    "coxswain service portals",
    "-j",
    SERVICES_CHAIN,
];
const POSTROUTING_RULE: &[&str] = &[
    "-m",
    "comment",
    "--comment",
    "coxswain postrouting rules",
    "-j",
    POSTROUTING_CHAIN,
];
const FILTER_PORTALS: &[&str] = &[
    "-m",
    "conntrack",
    "--ctstate",
    "NEW",
    "-m",
    "comment",
    "--comment",
    "coxswain service portals",
    "-j",
    SERVICES_FILTER_CHAIN,
];
const EXTERNAL_PORTALS: &[&str] = &[
    "-m",
    "conntrack",
    "--ctstate",
    "NEW",
    "-m",
    "comment",
    "--comment",
    "coxswain externally-visible service portals",
    "-j",
    EXTERNAL_SERVICES_CHAIN,
];

/// The rules kube-proxy ensures in built-in chains before each restore.
pub const JUMP_RULES: &[JumpRule] = &[
    JumpRule {
        table: "nat",
        chain: "PREROUTING",
        rule: PORTALS,
        target: SERVICES_CHAIN,
    },
    JumpRule {
        table: "nat",
        chain: "OUTPUT",
        rule: PORTALS,
        target: SERVICES_CHAIN,
    },
    JumpRule {
        table: "nat",
        chain: "POSTROUTING",
        rule: POSTROUTING_RULE,
        target: POSTROUTING_CHAIN,
    },
    JumpRule {
        table: "filter",
        chain: "INPUT",
        rule: FILTER_PORTALS,
        target: SERVICES_FILTER_CHAIN,
    },
    JumpRule {
        table: "filter",
        chain: "FORWARD",
        rule: FILTER_PORTALS,
        target: SERVICES_FILTER_CHAIN,
    },
    JumpRule {
        table: "filter",
        chain: "OUTPUT",
        rule: FILTER_PORTALS,
        target: SERVICES_FILTER_CHAIN,
    },
    // Not from OUTPUT, as kube-proxy: the node's own traffic to an external
    // frontend is always translated (`--src-type LOCAL`).
    JumpRule {
        table: "filter",
        chain: "INPUT",
        rule: EXTERNAL_PORTALS,
        target: EXTERNAL_SERVICES_CHAIN,
    },
    JumpRule {
        table: "filter",
        chain: "FORWARD",
        rule: EXTERNAL_PORTALS,
        target: EXTERNAL_SERVICES_CHAIN,
    },
];

/// An IPv4 network (`10.244.0.0/16`), host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// The network of `addr` with a `prefix`-bit mask (`None` past 32).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        (prefix <= 32).then(|| Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & Self::mask(prefix)),
            prefix,
        })
    }

    fn mask(prefix: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == u32::from(self.addr)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A string that is not an IPv4 CIDR.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid IPv4 CIDR {input:?}: expected an address and a prefix length of 0 to 32, such as 10.244.0.0/16"
)]
pub struct ParseCidrError {
    input: String,
}

impl FromStr for Ipv4Cidr {
    type Err = ParseCidrError;

    /// `10.244.0.0/16`; host bits are cleared, as kube-proxy's
    /// `--cluster-cidr` does.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = || ParseCidrError {
            input: s.to_owned(),
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(error)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| error())?;
        // `u8` parsing alone would accept `+16`.
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(error());
        }
        let prefix: u8 = prefix.parse().map_err(|_| error())?;
        Ipv4Cidr::new(addr, prefix).ok_or_else(error)
    }
}

/// Choices kube-proxy makes by flag, and how the tables are shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IptablesOptions {
    /// Mark traffic from an endpoint to its own Service for masquerading
    /// (one more rule per endpoint), as kube-proxy always does. Off, a
    /// ClusterIP with 10 endpoints is the 21 rules the measured baselines
    /// use.
    pub masquerade_hairpin: bool,
    /// Other programs keep rules in the `nat` and `filter` tables too
    /// (kube-proxy's assumption): restore with `--noflush`, leave built-in
    /// chains alone (ensure [`JUMP_RULES`] separately) and delete our stale
    /// chains. Off, the tables are ours: a restore replaces them whole,
    /// built-in chains and jump rules included. On iptables 1.8.9's
    /// nf_tables backend that is ten times faster (1,000 Services: 0.5 s
    /// instead of 5 s; `--noflush` looks every declared chain up in a
    /// list).
    pub shared_tables: bool,
    /// The sources that are pods (kube-proxy's `--cluster-cidr`, its
    /// `ClusterCIDR` local-traffic detection; the node's pod CIDR gives its
    /// `NodeCIDR` one). With it, pods reach an external frontend under
    /// `externalTrafficPolicy: Local` as they reach its ClusterIP (every
    /// endpoint), and ClusterIP traffic from elsewhere is masqueraded. Off
    /// (kube-proxy's default), neither: one rule fewer per Service.
    pub cluster_cidr: Option<Ipv4Cidr>,
}

impl Default for IptablesOptions {
    fn default() -> Self {
        Self {
            masquerade_hairpin: true,
            shared_tables: true,
            cluster_cidr: None,
        }
    }
}

/// One rendered sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IptablesRuleset {
    /// Input for `iptables-restore` (with [`IptablesRuleset::restore_args`]).
    pub restore: String,
    /// Rules appended to our chains (`-A` lines, jump rules excluded).
    pub rules: usize,
    /// Our chains, per table, for the next sync to delete the stale ones.
    pub chains: BTreeSet<(&'static str, String)>,
    /// Rendered with [`IptablesOptions::shared_tables`].
    pub shared_tables: bool,
}

impl IptablesRuleset {
    /// Arguments of `iptables-restore` for this input.
    pub fn restore_args(&self) -> &'static [&'static str] {
        if self.shared_tables {
            &["--noflush"]
        } else {
            &[]
        }
    }
}

/// Built-in chains of the tables we write, with their policies.
const BUILTIN_CHAINS: &[(&str, &[&str])] = &[
    ("filter", &["INPUT", "FORWARD", "OUTPUT"]),
    ("nat", &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]),
];

/// A jump rule as a restore line (`-A CHAIN args`), arguments with spaces
/// quoted.
fn jump_line(jump: &JumpRule) -> String {
    let args: Vec<String> = jump
        .rule
        .iter()
        .map(|a| {
            if a.contains(' ') {
                format!("\"{a}\"")
            } else {
                (*a).to_owned()
            }
        })
        .collect();
    format!("-A {} {}\n", jump.chain, args.join(" "))
}

/// Renders a full sync of `frontends` (typically [`crate::ProxyState::desired`]).
/// Chains `previous` created that this sync does not want are deleted.
pub fn render(
    frontends: &[FrontendView],
    options: &IptablesOptions,
    previous: Option<&IptablesRuleset>,
) -> IptablesRuleset {
    let groups = port_groups(frontends);
    let endpoints: usize = groups
        .iter()
        .flat_map(|g| &g.variants)
        .map(|v| v.backends.len())
        .sum();
    let comments = endpoints <= LARGE_CLUSTER_ENDPOINTS;

    let mut filter = Table::new("filter");
    let mut nat = Table::new("nat");
    filter.declare(SERVICES_FILTER_CHAIN);
    filter.declare(EXTERNAL_SERVICES_CHAIN);
    for chain in [SERVICES_CHAIN, MARK_MASQ_CHAIN, POSTROUTING_CHAIN] {
        nat.declare(chain);
    }
    nat.rule(MARK_MASQ_CHAIN, format!("-j MARK --or-mark {MASQ_MARK}"));
    nat.rule(
        POSTROUTING_CHAIN,
        format!("-m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"),
    );
    // Clear the mark, so that a re-traversal (an IPsec-encapsulated packet,
    // say) is not masqueraded twice.
    nat.rule(POSTROUTING_CHAIN, format!("-j MARK --xor-mark {MASQ_MARK}"));
    nat.rule(POSTROUTING_CHAIN, "-j MASQUERADE --random-fully".to_owned());

    let mut endpoint_chains = BTreeSet::new();
    for group in &groups {
        let spn = group.port_name_string();
        let proto = group.protocol.as_str().to_ascii_lowercase();
        let mut port = PortWriter {
            nat: &mut nat,
            endpoint_chains: &mut endpoint_chains,
            group,
            spn: &spn,
            proto: &proto,
            comments,
            options,
        };
        // externalTrafficPolicy: Local: the node-local endpoints' chain,
        // unless there are none.
        let local_chain = group
            .local
            .as_ref()
            .filter(|local| !local.backends.is_empty())
            .map(|_| service_chain(&spn, &proto, 1));
        for (index, variant) in group.variants.iter().enumerate() {
            if variant.backends.is_empty() {
                for frontend in &variant.frontends {
                    filter.rule(
                        filter_chain(frontend.kind),
                        format!(
                            "-m comment --comment \"{spn} has no endpoints\" {} -j REJECT --reject-with icmp-port-unreachable",
                            frontend_match(frontend)
                        ),
                    );
                }
                continue;
            }
            let svc_chain = service_chain(&spn, &proto, index);
            let mut ext_chain = None;
            for frontend in &variant.frontends {
                let local_policy = group.has_local_twin(frontend);
                let snat = frontend.flags & service_flags::SNAT != 0;
                let target = if local_policy || snat {
                    ext_chain
                        .get_or_insert_with(|| {
                            let chain = external_chain(&spn, &proto, index);
                            if local_policy {
                                port.local_external_chain(
                                    &chain,
                                    &svc_chain,
                                    local_chain.as_deref(),
                                );
                            } else {
                                port.cluster_external_chain(&chain, &svc_chain);
                            }
                            chain
                        })
                        .clone()
                } else {
                    svc_chain.clone()
                };
                port.nat.rule(
                    SERVICES_CHAIN,
                    format!(
                        "-m comment --comment \"{spn} {}\" {} -j {target}",
                        kind_comment(frontend.kind),
                        frontend_match(frontend)
                    ),
                );
                if local_policy && local_chain.is_none() {
                    // What the external chain did not short-circuit is
                    // still untranslated here.
                    filter.rule(
                        EXTERNAL_SERVICES_CHAIN,
                        format!(
                            "-m comment --comment \"{spn} has no local endpoints\" {} -j DROP",
                            frontend_match(frontend)
                        ),
                    );
                }
            }
            port.policy_chain(&svc_chain, variant.backends, &variant.frontends);
        }
        if let (Some(chain), Some(local)) = (&local_chain, &group.local) {
            // An internalTrafficPolicy: Local ClusterIP's chain has the
            // same name and endpoints.
            let written = group
                .variants
                .get(1)
                .is_some_and(|v| same_backends(v.backends, local.backends));
            if !written {
                port.policy_chain(chain, local.backends, &[]);
            }
        }
    }

    let mut chains = BTreeSet::new();
    let mut restore = String::with_capacity(filter.rules.len() + nat.rules.len() + 4096);
    let mut rules = 0;
    for table in [filter, nat] {
        // A whole-table restore deletes every chain it does not declare.
        let stale: Vec<&String> = previous
            .iter()
            .filter(|_| options.shared_tables)
            .flat_map(|p| &p.chains)
            .filter(|(t, chain)| *t == table.name && !table.declared.contains(chain))
            .map(|(_, chain)| chain)
            .collect();
        let _ = writeln!(restore, "*{}", table.name);
        if !options.shared_tables {
            let builtin = BUILTIN_CHAINS
                .iter()
                .filter(|(t, _)| *t == table.name)
                .flat_map(|(_, chains)| chains.iter());
            for chain in builtin {
                let _ = writeln!(restore, ":{chain} ACCEPT [0:0]");
            }
        }
        for chain in table.order.iter().chain(stale.iter().copied()) {
            let _ = writeln!(restore, ":{chain} - [0:0]");
        }
        if !options.shared_tables {
            for jump in JUMP_RULES.iter().filter(|j| j.table == table.name) {
                restore.push_str(&jump_line(jump));
            }
        }
        restore.push_str(&table.rules);
        for chain in stale {
            let _ = writeln!(restore, "-X {chain}");
        }
        restore.push_str("COMMIT\n");
        rules += table.count;
        chains.extend(table.order.into_iter().map(|c| (table.name, c)));
    }
    IptablesRuleset {
        restore,
        rules,
        chains,
        shared_tables: options.shared_tables,
    }
}

/// One table of a restore input being built.
struct Table {
    name: &'static str,
    /// Chains in declaration order.
    order: Vec<String>,
    declared: HashSet<String>,
    rules: String,
    count: usize,
}

impl Table {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            order: Vec::new(),
            declared: HashSet::new(),
            rules: String::new(),
            count: 0,
        }
    }

    fn declare(&mut self, chain: &str) {
        if self.declared.insert(chain.to_owned()) {
            self.order.push(chain.to_owned());
        }
    }

    fn rule(&mut self, chain: &str, rule: String) {
        let _ = writeln!(self.rules, "-A {chain} {rule}");
        self.count += 1;
    }
}

/// Writes the nat chains of one Service port.
struct PortWriter<'a, 'g> {
    nat: &'a mut Table,
    /// Endpoint chains written so far (a port's policy chains share them).
    endpoint_chains: &'a mut BTreeSet<String>,
    group: &'a PortGroup<'g>,
    spn: &'a str,
    proto: &'a str,
    comments: bool,
    options: &'a IptablesOptions,
}

impl PortWriter<'_, '_> {
    /// A policy chain (`COX-SVC`, `COX-SVL`) choosing among `backends`, and
    /// the endpoint chains not written yet. With a cluster CIDR, ClusterIP
    /// traffic among `frontends` from outside it is masqueraded first.
    fn policy_chain(&mut self, chain: &str, backends: &[BackendView], frontends: &[&FrontendView]) {
        let (spn, proto) = (self.spn, self.proto);
        self.nat.declare(chain);
        if let Some(cidr) = self.options.cluster_cidr {
            for frontend in frontends
                .iter()
                .filter(|f| f.kind == FrontendKind::ClusterIp)
            {
                self.nat.rule(
                    chain,
                    format!(
                        "-m comment --comment \"{spn} cluster IP\" {} ! -s {cidr} -j {MARK_MASQ_CHAIN}",
                        frontend_match(frontend)
                    ),
                );
            }
        }
        let seps: Vec<String> = backends
            .iter()
            .map(|b| endpoint_chain(spn, proto, b))
            .collect();
        let comments = self.comments;
        let comment = |b: &BackendView| {
            if comments {
                format!("-m comment --comment \"{spn} -> {}:{}\" ", b.addr, b.port)
            } else {
                String::new()
            }
        };
        if let Some(timeout) = self.group.affinity_timeout_s {
            for (b, sep) in backends.iter().zip(&seps) {
                self.nat.rule(
                    chain,
                    format!(
                        "{}-m recent --name {sep} --rcheck --seconds {timeout} --reap -j {sep}",
                        comment(b)
                    ),
                );
            }
        }
        let n = seps.len();
        for (i, (b, sep)) in backends.iter().zip(&seps).enumerate() {
            let statistic = if i + 1 < n {
                format!(
                    "-m statistic --mode random --probability {} ",
                    probability(n - i)
                )
            } else {
                String::new()
            };
            self.nat
                .rule(chain, format!("{}{statistic}-j {sep}", comment(b)));
        }
        for (b, sep) in backends.iter().zip(&seps) {
            if !self.endpoint_chains.insert(sep.clone()) {
                continue;
            }
            self.nat.declare(sep);
            let comment = if comments {
                format!("-m comment --comment {spn} ")
            } else {
                String::new()
            };
            if self.options.masquerade_hairpin {
                self.nat.rule(
                    sep,
                    format!("{comment}-s {}/32 -j {MARK_MASQ_CHAIN}", b.addr),
                );
            }
            let recent = if self.group.affinity_timeout_s.is_some() {
                format!("-m recent --name {sep} --set ")
            } else {
                String::new()
            };
            self.nat.rule(
                sep,
                format!(
                    "{comment}-p {proto} -m {proto} {recent}-j DNAT --to-destination {}:{}",
                    b.addr, b.port
                ),
            );
        }
    }

    /// `COX-EXT` under `externalTrafficPolicy: Cluster`: everything
    /// masqueraded, then every endpoint.
    fn cluster_external_chain(&mut self, chain: &str, svc_chain: &str) {
        let spn = self.spn;
        self.nat.declare(chain);
        self.nat.rule(
            chain,
            format!(
                "-m comment --comment \"masquerade traffic for {spn} external destinations\" -j {MARK_MASQ_CHAIN}"
            ),
        );
        self.nat.rule(chain, format!("-j {svc_chain}"));
    }

    /// `COX-EXT` under `externalTrafficPolicy: Local`: pods and the node
    /// itself reach every endpoint (the node masqueraded), the rest only
    /// the local ones (`local_chain`; with none, nothing: the filter table
    /// drops it).
    fn local_external_chain(&mut self, chain: &str, svc_chain: &str, local_chain: Option<&str>) {
        let spn = self.spn;
        self.nat.declare(chain);
        if let Some(cidr) = self.options.cluster_cidr {
            self.nat.rule(
                chain,
                format!(
                    "-m comment --comment \"pod traffic for {spn} external destinations\" -s {cidr} -j {svc_chain}"
                ),
            );
        }
        self.nat.rule(
            chain,
            format!(
                "-m comment --comment \"masquerade LOCAL traffic for {spn} external destinations\" -m addrtype --src-type LOCAL -j {MARK_MASQ_CHAIN}"
            ),
        );
        self.nat.rule(
            chain,
            format!(
                "-m comment --comment \"route LOCAL traffic for {spn} external destinations\" -m addrtype --src-type LOCAL -j {svc_chain}"
            ),
        );
        if let Some(local_chain) = local_chain {
            self.nat.rule(chain, format!("-j {local_chain}"));
        }
    }
}

/// Where a frontend without endpoints is rejected: kube-proxy's
/// `KUBE-SERVICES` (filter) for ClusterIPs, `KUBE-EXTERNAL-SERVICES` for
/// the rest.
fn filter_chain(kind: FrontendKind) -> &'static str {
    match kind {
        FrontendKind::ClusterIp => SERVICES_FILTER_CHAIN,
        FrontendKind::NodePort | FrontendKind::External => EXTERNAL_SERVICES_CHAIN,
    }
}

/// `-d 10.96.0.10/32 -p tcp -m tcp --dport 80`.
fn frontend_match(frontend: &FrontendView) -> String {
    let p = frontend.protocol.as_str().to_ascii_lowercase();
    format!(
        "-d {}/32 -p {p} -m {p} --dport {}",
        frontend.addr, frontend.port
    )
}

fn kind_comment(kind: FrontendKind) -> &'static str {
    match kind {
        FrontendKind::ClusterIp => "cluster IP",
        FrontendKind::NodePort => "node port",
        FrontendKind::External => "external IP",
    }
}

/// `1/remaining` as kube-proxy prints it (`%0.10f`).
fn probability(remaining: usize) -> String {
    format!("{:.10}", 1.0 / remaining as f64)
}

/// `COX-SVC-<hash>` for a port's (first) backend list, `COX-SVL-<hash>` for
/// its node-local list (kube-proxy's names), then indexed hashes.
fn service_chain(spn: &str, proto: &str, variant: usize) -> String {
    match variant {
        0 => format!("COX-SVC-{}", hash16(&format!("{spn}{proto}"))),
        1 => format!("COX-SVL-{}", hash16(&format!("{spn}{proto}"))),
        n => format!("COX-SVC-{}", hash16(&format!("{spn}{proto}#{n}"))),
    }
}

fn external_chain(spn: &str, proto: &str, variant: usize) -> String {
    match variant {
        0 => format!("COX-EXT-{}", hash16(&format!("{spn}{proto}"))),
        n => format!("COX-EXT-{}", hash16(&format!("{spn}{proto}#{n}"))),
    }
}

fn endpoint_chain(spn: &str, proto: &str, backend: &BackendView) -> String {
    format!(
        "COX-SEP-{}",
        hash16(&format!("{spn}{proto}{}:{}", backend.addr, backend.port))
    )
}

fn hash16(input: &str) -> String {
    let mut encoded = base32(&sha256(input.as_bytes()));
    encoded.truncate(16);
    encoded
}

// ------------------------------------------------- shared with `nftables`

/// One Service port, as kube-proxy names it, with its frontends grouped by
/// the backend list they use.
#[derive(Debug)]
pub(crate) struct PortGroup<'a> {
    pub service: &'a ObjectRef,
    pub port_name: &'a str,
    pub protocol: Protocol,
    pub affinity_timeout_s: Option<u32>,
    /// Distinct backend lists of the [`Scope::All`] frontends, the longest
    /// (cluster-wide) first; a second one appears only under
    /// `internalTrafficPolicy: Local` (the ClusterIP's node-local list).
    pub variants: Vec<Variant<'a>>,
    /// Under `externalTrafficPolicy: Local`: the [`Scope::Local`] frontends
    /// whose [`Scope::All`] twins (same address and port) are in
    /// `variants`, with the node-local endpoints (one list for the port).
    pub local: Option<Variant<'a>>,
}

/// Frontends of a port sharing one backend list.
#[derive(Debug)]
pub(crate) struct Variant<'a> {
    pub backends: &'a [BackendView],
    pub frontends: Vec<&'a FrontendView>,
}

impl PortGroup<'_> {
    /// kube-proxy's `ServicePortName.String()`: `ns/name:port`, or `ns/name`
    /// for an unnamed port.
    pub fn port_name_string(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.service.namespace, self.service.name)
        } else {
            format!(
                "{}/{}:{}",
                self.service.namespace, self.service.name, self.port_name
            )
        }
    }

    /// Whether `frontend` (of [`Self::variants`]) has a [`Scope::Local`]
    /// twin: its external traffic takes the `Local` policy's path.
    pub fn has_local_twin(&self, frontend: &FrontendView) -> bool {
        self.local.as_ref().is_some_and(|local| {
            local
                .frontends
                .iter()
                .any(|f| f.addr == frontend.addr && f.port == frontend.port)
        })
    }
}

/// The frontends the baselines program (active ones), grouped by Service
/// port in the order of `frontends`.
pub(crate) fn port_groups(frontends: &[FrontendView]) -> Vec<PortGroup<'_>> {
    let mut index: BTreeMap<(&ObjectRef, &str, Protocol), usize> = BTreeMap::new();
    let mut groups: Vec<PortGroup<'_>> = Vec::new();
    let mut locals: Vec<&FrontendView> = Vec::new();
    for frontend in frontends.iter().filter(|f| f.active) {
        let key = (
            &frontend.service,
            frontend.port_name.as_str(),
            frontend.protocol,
        );
        if frontend.scope == Scope::Local {
            locals.push(frontend);
            continue;
        }
        let at = *index.entry(key).or_insert_with(|| {
            groups.push(PortGroup {
                service: &frontend.service,
                port_name: &frontend.port_name,
                protocol: frontend.protocol,
                affinity_timeout_s: None,
                variants: Vec::new(),
                local: None,
            });
            groups.len() - 1
        });
        let group = &mut groups[at];
        if group.affinity_timeout_s.is_none() {
            group.affinity_timeout_s = frontend.affinity_timeout_s;
        }
        match group
            .variants
            .iter_mut()
            .find(|v| same_backends(v.backends, &frontend.backends))
        {
            Some(variant) => variant.frontends.push(frontend),
            None => group.variants.push(Variant {
                backends: &frontend.backends,
                frontends: vec![frontend],
            }),
        }
    }
    for frontend in locals {
        let key = (
            &frontend.service,
            frontend.port_name.as_str(),
            frontend.protocol,
        );
        let Some(&at) = index.get(&key) else {
            continue;
        };
        let group = &mut groups[at];
        let has_twin = group
            .variants
            .iter()
            .flat_map(|v| &v.frontends)
            .any(|f| f.addr == frontend.addr && f.port == frontend.port);
        if !has_twin {
            continue;
        }
        group
            .local
            .get_or_insert_with(|| Variant {
                backends: &frontend.backends,
                frontends: Vec::new(),
            })
            .frontends
            .push(frontend);
    }
    for group in &mut groups {
        // Stable: equal lengths keep their order.
        group
            .variants
            .sort_by_key(|v| std::cmp::Reverse(v.backends.len()));
    }
    groups
}

/// Same endpoints in the same order (ids and flags do not matter here).
pub(crate) fn same_backends(a: &[BackendView], b: &[BackendView]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.addr == y.addr && x.port == y.port)
}

/// RFC 4648 base32, standard alphabet, with padding (Go's
/// `base32.StdEncoding`).
pub(crate) fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    for chunk in bytes.chunks(5) {
        let mut block = [0u8; 5];
        block[..chunk.len()].copy_from_slice(chunk);
        let bits = block.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        let chars = (chunk.len() * 8).div_ceil(5);
        for i in 0..8 {
            if i < chars {
                let value = (bits >> (35 - 5 * i)) & 0x1f;
                out.push(char::from(ALPHABET[value as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// SHA-256 (FIPS 180-4). Names only, never security: kube-proxy derives its
/// chain names with it, and matching them byte for byte keeps the baseline
/// honest without another dependency.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in message.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (state, value) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *state = state.wrapping_add(value);
        }
    }
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    pub(crate) fn backend(addr: &str, port: u16) -> BackendView {
        BackendView {
            addr: addr.parse().unwrap(),
            port,
            flags: 0,
            backend_id: None,
        }
    }

    /// A ClusterIP frontend of `namespace/name` port `port_name`.
    pub(crate) fn cluster_ip(
        service: (&str, &str),
        port_name: &str,
        vip: &str,
        port: u16,
        protocol: Protocol,
        backends: Vec<BackendView>,
    ) -> FrontendView {
        FrontendView {
            service: ObjectRef::new(service.0, service.1),
            port_name: port_name.to_owned(),
            kind: FrontendKind::ClusterIp,
            addr: vip.parse::<Ipv4Addr>().unwrap(),
            port,
            protocol,
            scope: Scope::All,
            flags: 0,
            affinity_timeout_s: None,
            service_id: None,
            active: true,
            backends,
        }
    }

    /// The NodePort frontends on `node` the engine wants for `cluster`'s
    /// Service: one of scope `All` (every endpoint, source-NATed under
    /// `Cluster`), and under `Local` a twin of scope `Local` with the
    /// endpoints in `local`.
    pub(crate) fn node_ports(
        cluster: &FrontendView,
        node: &str,
        port: u16,
        local: Option<Vec<BackendView>>,
    ) -> Vec<FrontendView> {
        let all = FrontendView {
            kind: FrontendKind::NodePort,
            addr: node.parse().unwrap(),
            port,
            flags: service_flags::NODE_PORT
                | if local.is_some() {
                    0
                } else {
                    service_flags::SNAT
                },
            ..cluster.clone()
        };
        let twin = local.map(|backends| FrontendView {
            scope: Scope::Local,
            flags: service_flags::NODE_PORT,
            backends,
            ..all.clone()
        });
        std::iter::once(all).chain(twin).collect()
    }

    /// `ns1/svc1:p80` on 172.30.0.41, endpoints 10.180.0.1 (local) and
    /// 10.180.0.2, NodePort 30080 on 192.168.1.10 under
    /// `externalTrafficPolicy: Local`, with `local` as the local endpoints.
    pub(crate) fn local_policy(local: Vec<BackendView>) -> Vec<FrontendView> {
        let cluster = cluster_ip(
            ("ns1", "svc1"),
            "p80",
            "172.30.0.41",
            80,
            Protocol::Tcp,
            vec![backend("10.180.0.1", 80), backend("10.180.0.2", 80)],
        );
        let mut frontends = node_ports(&cluster, "192.168.1.10", 30080, Some(local));
        frontends.insert(0, cluster);
        frontends
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sha256_and_base32_match_the_standards() {
        let table: [(&[u8], &str); 3] = [
            (
                b"",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                b"abc",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
            ),
        ];
        for (input, want) in table {
            assert_eq!(hex(&sha256(input)), want, "{input:?}");
        }
        // RFC 4648 test vectors.
        let table = [
            ("", ""),
            ("f", "MY======"),
            ("fo", "MZXQ===="),
            ("foo", "MZXW6==="),
            ("foob", "MZXW6YQ="),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI======"),
        ];
        for (input, want) in table {
            assert_eq!(base32(input.as_bytes()), want, "{input:?}");
        }
    }

    /// The names kube-proxy's own tests expect for `ns1/svc1:p80` and its
    /// endpoint `10.180.0.1:80`.
    #[test]
    fn chain_names_are_kube_proxys() {
        let b = backend("10.180.0.1", 80);
        assert_eq!(
            service_chain("ns1/svc1:p80", "tcp", 0),
            "COX-SVC-XPGD46QRK7WJZT7O"
        );
        assert_eq!(
            endpoint_chain("ns1/svc1:p80", "tcp", &b),
            "COX-SEP-SXIVWICOYRO3J4NJ"
        );
    }

    #[test]
    fn one_service_with_three_endpoints_reads_like_kube_proxy() {
        let frontends = [cluster_ip(
            ("ns1", "svc1"),
            "p80",
            "172.30.0.41",
            80,
            Protocol::Tcp,
            vec![
                backend("10.180.0.1", 80),
                backend("10.180.0.2", 80),
                backend("10.180.0.3", 80),
            ],
        )];
        let got = render(&frontends, &IptablesOptions::default(), None);
        let want = r#"*filter
:COX-SERVICES-FILTER - [0:0]
:COX-EXTERNAL-SERVICES - [0:0]
COMMIT
*nat
:COX-SERVICES - [0:0]
:COX-MARK-MASQ - [0:0]
:COX-POSTROUTING - [0:0]
:COX-SVC-XPGD46QRK7WJZT7O - [0:0]
:COX-SEP-SXIVWICOYRO3J4NJ - [0:0]
:COX-SEP-LXVODXWDISEETFEF - [0:0]
:COX-SEP-ICDUIKC33SFI6ZPR - [0:0]
-A COX-MARK-MASQ -j MARK --or-mark 0x4000
-A COX-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A COX-POSTROUTING -j MARK --xor-mark 0x4000
-A COX-POSTROUTING -j MASQUERADE --random-fully
-A COX-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -d 172.30.0.41/32 -p tcp -m tcp --dport 80 -j COX-SVC-XPGD46QRK7WJZT7O
-A COX-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.3333333333 -j COX-SEP-SXIVWICOYRO3J4NJ
-A COX-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.2:80" -m statistic --mode random --probability 0.5000000000 -j COX-SEP-LXVODXWDISEETFEF
-A COX-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.3:80" -j COX-SEP-ICDUIKC33SFI6ZPR
-A COX-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1/32 -j COX-MARK-MASQ
-A COX-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -p tcp -m tcp -j DNAT --to-destination 10.180.0.1:80
-A COX-SEP-LXVODXWDISEETFEF -m comment --comment ns1/svc1:p80 -s 10.180.0.2/32 -j COX-MARK-MASQ
-A COX-SEP-LXVODXWDISEETFEF -m comment --comment ns1/svc1:p80 -p tcp -m tcp -j DNAT --to-destination 10.180.0.2:80
-A COX-SEP-ICDUIKC33SFI6ZPR -m comment --comment ns1/svc1:p80 -s 10.180.0.3/32 -j COX-MARK-MASQ
-A COX-SEP-ICDUIKC33SFI6ZPR -m comment --comment ns1/svc1:p80 -p tcp -m tcp -j DNAT --to-destination 10.180.0.3:80
COMMIT
"#;
        assert_eq!(got.restore, want);
        assert_eq!(got.rules, 4 + 1 + 3 + 6);
    }

    /// Rules per Service by shape, the figures the baselines are measured
    /// with (the 4 static masquerading rules excluded).
    #[test]
    fn rule_counts_per_service() {
        struct Shape {
            name: &'static str,
            endpoints: usize,
            hairpin: bool,
            affinity: Option<u32>,
            cluster_cidr: bool,
            rules: usize,
        }
        let base = Shape {
            name: "10 endpoints, kube-proxy defaults",
            endpoints: 10,
            hairpin: true,
            affinity: None,
            cluster_cidr: false,
            rules: 31,
        };
        let table = [
            Shape { ..base },
            Shape {
                name: "10 endpoints, no hairpin (measured baseline)",
                hairpin: false,
                rules: 21,
                ..base
            },
            Shape {
                name: "a cluster CIDR masquerades ClusterIP traffic from outside it",
                hairpin: false,
                cluster_cidr: true,
                rules: 22,
                ..base
            },
            Shape {
                name: "1 endpoint",
                endpoints: 1,
                rules: 4,
                ..base
            },
            Shape {
                name: "no endpoints: one REJECT",
                endpoints: 0,
                rules: 1,
                ..base
            },
            Shape {
                name: "affinity adds a recent check per endpoint",
                hairpin: false,
                affinity: Some(60),
                rules: 31,
                ..base
            },
        ];
        for shape in table {
            let backends = (0..shape.endpoints)
                .map(|i| backend(&format!("10.0.0.{}", i + 1), 8080))
                .collect();
            let mut frontend = cluster_ip(
                ("default", "web"),
                "http",
                "10.96.0.10",
                80,
                Protocol::Tcp,
                backends,
            );
            frontend.affinity_timeout_s = shape.affinity;
            let got = render(
                &[frontend],
                &IptablesOptions {
                    masquerade_hairpin: shape.hairpin,
                    cluster_cidr: shape.cluster_cidr.then(|| "10.0.0.0/16".parse().unwrap()),
                    ..IptablesOptions::default()
                },
                None,
            );
            assert_eq!(got.rules - 4, shape.rules, "{}", shape.name);
        }
    }

    #[test]
    fn services_without_endpoints_are_rejected_in_the_filter_table() {
        let frontends = [cluster_ip(
            ("ns2", "svc2"),
            "",
            "172.30.0.42",
            53,
            Protocol::Udp,
            vec![],
        )];
        let got = render(&frontends, &IptablesOptions::default(), None);
        assert!(
            got.restore.starts_with(
                "*filter\n:COX-SERVICES-FILTER - [0:0]\n:COX-EXTERNAL-SERVICES - [0:0]\n-A COX-SERVICES-FILTER -m comment --comment \"ns2/svc2 has no endpoints\" -d 172.30.0.42/32 -p udp -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable\nCOMMIT\n"
            ),
            "{}",
            got.restore
        );
        assert!(!got.restore.contains("COX-SVC-"), "{}", got.restore);
    }

    #[test]
    fn affinity_uses_recent_lists_named_after_endpoint_chains() {
        let mut frontend = cluster_ip(
            ("ns1", "svc1"),
            "p80",
            "172.30.0.41",
            80,
            Protocol::Tcp,
            vec![backend("10.180.0.1", 80)],
        );
        frontend.affinity_timeout_s = Some(10_800);
        let got = render(&[frontend], &IptablesOptions::default(), None);
        for line in [
            "-A COX-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 -> 10.180.0.1:80\" -m recent --name COX-SEP-SXIVWICOYRO3J4NJ --rcheck --seconds 10800 --reap -j COX-SEP-SXIVWICOYRO3J4NJ",
            "-A COX-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -p tcp -m tcp -m recent --name COX-SEP-SXIVWICOYRO3J4NJ --set -j DNAT --to-destination 10.180.0.1:80",
        ] {
            assert!(
                got.restore.contains(line),
                "missing {line}\n{}",
                got.restore
            );
        }
    }

    #[test]
    fn external_frontends_wanting_snat_go_through_an_ext_chain() {
        let cluster = cluster_ip(
            ("ns1", "svc1"),
            "p80",
            "172.30.0.41",
            80,
            Protocol::Tcp,
            vec![backend("10.180.0.1", 80)],
        );
        let node_port = FrontendView {
            kind: FrontendKind::NodePort,
            addr: Ipv4Addr::new(192, 168, 1, 10),
            port: 30080,
            flags: service_flags::NODE_PORT | service_flags::SNAT,
            ..cluster.clone()
        };
        let got = render(&[cluster, node_port], &IptablesOptions::default(), None);
        for line in [
            "-A COX-SERVICES -m comment --comment \"ns1/svc1:p80 node port\" -d 192.168.1.10/32 -p tcp -m tcp --dport 30080 -j COX-EXT-XPGD46QRK7WJZT7O",
            "-A COX-EXT-XPGD46QRK7WJZT7O -m comment --comment \"masquerade traffic for ns1/svc1:p80 external destinations\" -j COX-MARK-MASQ",
            "-A COX-EXT-XPGD46QRK7WJZT7O -j COX-SVC-XPGD46QRK7WJZT7O",
        ] {
            assert!(
                got.restore.contains(line),
                "missing {line}\n{}",
                got.restore
            );
        }
        // One Service chain serves both frontends.
        assert_eq!(got.restore.matches(":COX-SVC-").count(), 1);
    }

    /// A local frontend needs its cluster-wide twin: alone, it is skipped.
    #[test]
    fn inactive_frontends_and_local_ones_without_a_twin_are_left_out() {
        let active = cluster_ip(
            ("a", "first"),
            "",
            "10.96.0.10",
            80,
            Protocol::Tcp,
            vec![backend("10.0.0.1", 80)],
        );
        let shadowed = FrontendView {
            service: ObjectRef::new("b", "second"),
            active: false,
            ..active.clone()
        };
        let local = FrontendView {
            scope: Scope::Local,
            addr: Ipv4Addr::new(192, 168, 1, 10),
            ..active.clone()
        };
        let got = render(
            &[active, shadowed, local],
            &IptablesOptions::default(),
            None,
        );
        assert_eq!(got.restore.matches("-A COX-SERVICES ").count(), 1);
        assert!(got.restore.contains("a/first cluster IP"));
    }

    #[test]
    fn stale_chains_of_the_previous_sync_are_deleted() {
        let two = cluster_ip(
            ("ns1", "svc1"),
            "p80",
            "172.30.0.41",
            80,
            Protocol::Tcp,
            vec![backend("10.180.0.1", 80), backend("10.180.0.2", 80)],
        );
        let one = FrontendView {
            backends: vec![backend("10.180.0.1", 80)],
            ..two.clone()
        };
        let first = render(&[two], &IptablesOptions::default(), None);
        let second = render(&[one], &IptablesOptions::default(), Some(&first));
        assert!(
            second
                .restore
                .contains(":COX-SEP-LXVODXWDISEETFEF - [0:0]\n")
        );
        assert!(
            second
                .restore
                .contains("-X COX-SEP-LXVODXWDISEETFEF\nCOMMIT\n"),
            "{}",
            second.restore
        );
        assert!(
            !second
                .chains
                .contains(&("nat", "COX-SEP-LXVODXWDISEETFEF".to_owned()))
        );
        // Nothing stale: nothing deleted.
        let third = render(&[], &IptablesOptions::default(), Some(&second));
        let fourth = render(&[], &IptablesOptions::default(), Some(&third));
        assert!(!fourth.restore.contains("-X "), "{}", fourth.restore);
    }

    #[test]
    fn owned_tables_are_replaced_whole_with_their_jump_rules() {
        let options = IptablesOptions {
            masquerade_hairpin: false,
            shared_tables: false,
            cluster_cidr: None,
        };
        let one = cluster_ip(
            ("ns1", "svc1"),
            "p80",
            "172.30.0.41",
            80,
            Protocol::Tcp,
            vec![backend("10.180.0.1", 80)],
        );
        let first = render(std::slice::from_ref(&one), &options, None);
        assert_eq!(first.restore_args(), &[] as &[&str]);
        let want = r#"*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:COX-SERVICES-FILTER - [0:0]
:COX-EXTERNAL-SERVICES - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "coxswain service portals" -j COX-SERVICES-FILTER
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "coxswain service portals" -j COX-SERVICES-FILTER
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "coxswain service portals" -j COX-SERVICES-FILTER
-A INPUT -m conntrack --ctstate NEW -m comment --comment "coxswain externally-visible service portals" -j COX-EXTERNAL-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "coxswain externally-visible service portals" -j COX-EXTERNAL-SERVICES
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:COX-SERVICES - [0:0]
:COX-MARK-MASQ - [0:0]
:COX-POSTROUTING - [0:0]
:COX-SVC-XPGD46QRK7WJZT7O - [0:0]
:COX-SEP-SXIVWICOYRO3J4NJ - [0:0]
-A PREROUTING -m comment --comment "coxswain service portals" -j COX-SERVICES
-A OUTPUT -m comment --comment "coxswain service portals" -j COX-SERVICES
-A POSTROUTING -m comment --comment "coxswain postrouting rules" -j COX-POSTROUTING
-A COX-MARK-MASQ -j MARK --or-mark 0x4000
-A COX-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A COX-POSTROUTING -j MARK --xor-mark 0x4000
-A COX-POSTROUTING -j MASQUERADE --random-fully
-A COX-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -d 172.30.0.41/32 -p tcp -m tcp --dport 80 -j COX-SVC-XPGD46QRK7WJZT7O
-A COX-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j COX-SEP-SXIVWICOYRO3J4NJ
-A COX-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -p tcp -m tcp -j DNAT --to-destination 10.180.0.1:80
COMMIT
"#;
        assert_eq!(first.restore, want);
        // No `-X`: chains the input does not declare disappear with the
        // table's contents.
        let second = render(&[], &options, Some(&first));
        assert!(!second.restore.contains("-X "), "{}", second.restore);
    }

    #[test]
    fn large_clusters_drop_comments_in_service_and_endpoint_chains() {
        let frontends: Vec<FrontendView> = (0..101)
            .map(|i| {
                cluster_ip(
                    ("default", &format!("svc{i}")),
                    "",
                    &format!("10.96.{}.{}", i / 250, i % 250 + 1),
                    80,
                    Protocol::Tcp,
                    (0..10)
                        .map(|j| backend(&format!("10.1.{i}.{}", j + 1), 8080))
                        .collect(),
                )
            })
            .collect();
        let got = render(&frontends, &IptablesOptions::default(), None);
        assert_eq!(got.restore.matches("--comment").count(), 101);
    }

    #[test]
    fn cidrs_parse_as_kube_proxy_reads_them() {
        let table: [(&str, Option<&str>); 8] = [
            ("10.244.0.0/16", Some("10.244.0.0/16")),
            ("10.244.1.7/16", Some("10.244.0.0/16")),
            ("0.0.0.0/0", Some("0.0.0.0/0")),
            ("10.1.2.3/32", Some("10.1.2.3/32")),
            ("10.244.0.0", None),
            ("10.244.0.0/33", None),
            ("10.244.0.0/+8", None),
            ("fd00::/8", None),
        ];
        for (input, want) in table {
            let got = input.parse::<Ipv4Cidr>().map(|c| c.to_string()).ok();
            assert_eq!(got.as_deref(), want, "{input}");
        }
        let err = "10.244.0.0".parse::<Ipv4Cidr>().unwrap_err().to_string();
        assert!(
            err.contains("\"10.244.0.0\"") && err.contains("10.244.0.0/16"),
            "{err}"
        );
        let cidr: Ipv4Cidr = "10.244.0.0/16".parse().unwrap();
        assert!(cidr.contains(Ipv4Addr::new(10, 244, 255, 1)));
        assert!(!cidr.contains(Ipv4Addr::new(10, 245, 0, 1)));
    }

    /// kube-proxy's `KUBE-EXT` and `KUBE-SVL` for `externalTrafficPolicy:
    /// Local`: pods and the node reach every endpoint, the rest the local
    /// one, unmasqueraded.
    #[test]
    fn local_policy_tells_sources_apart_like_kube_proxy() {
        let options = IptablesOptions {
            cluster_cidr: Some("10.180.0.0/16".parse().unwrap()),
            ..IptablesOptions::default()
        };
        let got = render(
            &local_policy(vec![backend("10.180.0.1", 80)]),
            &options,
            None,
        );
        let nat: Vec<&str> = got
            .restore
            .lines()
            .filter(|l| {
                l.starts_with("-A COX-SERVICES ")
                    || l.starts_with("-A COX-EXT-")
                    || l.starts_with("-A COX-SVL-")
                    || l.starts_with("-A COX-SVC-")
            })
            .collect();
        assert_eq!(
            nat,
            [
                "-A COX-SERVICES -m comment --comment \"ns1/svc1:p80 cluster IP\" -d 172.30.0.41/32 -p tcp -m tcp --dport 80 -j COX-SVC-XPGD46QRK7WJZT7O",
                "-A COX-EXT-XPGD46QRK7WJZT7O -m comment --comment \"pod traffic for ns1/svc1:p80 external destinations\" -s 10.180.0.0/16 -j COX-SVC-XPGD46QRK7WJZT7O",
                "-A COX-EXT-XPGD46QRK7WJZT7O -m comment --comment \"masquerade LOCAL traffic for ns1/svc1:p80 external destinations\" -m addrtype --src-type LOCAL -j COX-MARK-MASQ",
                "-A COX-EXT-XPGD46QRK7WJZT7O -m comment --comment \"route LOCAL traffic for ns1/svc1:p80 external destinations\" -m addrtype --src-type LOCAL -j COX-SVC-XPGD46QRK7WJZT7O",
                "-A COX-EXT-XPGD46QRK7WJZT7O -j COX-SVL-XPGD46QRK7WJZT7O",
                "-A COX-SERVICES -m comment --comment \"ns1/svc1:p80 node port\" -d 192.168.1.10/32 -p tcp -m tcp --dport 30080 -j COX-EXT-XPGD46QRK7WJZT7O",
                "-A COX-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 cluster IP\" -d 172.30.0.41/32 -p tcp -m tcp --dport 80 ! -s 10.180.0.0/16 -j COX-MARK-MASQ",
                "-A COX-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 -> 10.180.0.1:80\" -m statistic --mode random --probability 0.5000000000 -j COX-SEP-SXIVWICOYRO3J4NJ",
                "-A COX-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 -> 10.180.0.2:80\" -j COX-SEP-LXVODXWDISEETFEF",
                "-A COX-SVL-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 -> 10.180.0.1:80\" -j COX-SEP-SXIVWICOYRO3J4NJ",
            ],
            "{}",
            got.restore
        );
        // The local endpoint's chain is written once, for both policies.
        assert_eq!(got.restore.matches(":COX-SEP-SXIVWICOYRO3J4NJ ").count(), 1);
        assert_eq!(
            got.restore
                .matches("-A COX-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -p tcp")
                .count(),
            1
        );
        assert!(!got.restore.contains("-j DROP"), "{}", got.restore);
    }

    #[test]
    fn local_policy_without_a_local_endpoint_drops_in_the_filter_table() {
        let got = render(&local_policy(vec![]), &IptablesOptions::default(), None);
        assert!(
            got.restore.starts_with(
                "*filter\n:COX-SERVICES-FILTER - [0:0]\n:COX-EXTERNAL-SERVICES - [0:0]\n-A COX-EXTERNAL-SERVICES -m comment --comment \"ns1/svc1:p80 has no local endpoints\" -d 192.168.1.10/32 -p tcp -m tcp --dport 30080 -j DROP\nCOMMIT\n"
            ),
            "{}",
            got.restore
        );
        // No fall-through, no SVL: outside traffic leaves the chain
        // untranslated; pods (no cluster CIDR here) are outside traffic too.
        let ext: Vec<&str> = got
            .restore
            .lines()
            .filter(|l| l.starts_with("-A COX-EXT-"))
            .collect();
        assert_eq!(ext.len(), 2, "{ext:?}");
        assert!(
            ext.iter().all(|l| l.contains("--src-type LOCAL")),
            "{ext:?}"
        );
        assert!(!got.restore.contains("COX-SVL-"), "{}", got.restore);
    }

    /// Without any endpoint, a NodePort is rejected where kube-proxy
    /// rejects it (not only dropped), under either policy.
    #[test]
    fn external_frontends_without_endpoints_are_rejected_in_the_external_chain() {
        let cluster = cluster_ip(
            ("ns1", "svc1"),
            "p80",
            "172.30.0.41",
            80,
            Protocol::Tcp,
            vec![],
        );
        for local in [None, Some(vec![])] {
            let mut frontends = node_ports(&cluster, "192.168.1.10", 30080, local.clone());
            frontends.push(cluster.clone());
            let got = render(&frontends, &IptablesOptions::default(), None);
            let filter: Vec<&str> = got
                .restore
                .lines()
                .filter(|l| l.starts_with("-A "))
                .collect();
            assert_eq!(
                filter,
                [
                    "-A COX-EXTERNAL-SERVICES -m comment --comment \"ns1/svc1:p80 has no endpoints\" -d 192.168.1.10/32 -p tcp -m tcp --dport 30080 -j REJECT --reject-with icmp-port-unreachable",
                    "-A COX-SERVICES-FILTER -m comment --comment \"ns1/svc1:p80 has no endpoints\" -d 172.30.0.41/32 -p tcp -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable",
                    "-A COX-MARK-MASQ -j MARK --or-mark 0x4000",
                    "-A COX-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
                    "-A COX-POSTROUTING -j MARK --xor-mark 0x4000",
                    "-A COX-POSTROUTING -j MASQUERADE --random-fully",
                ],
                "local: {local:?}"
            );
        }
    }

    /// Rules of a NodePort Service (10 endpoints, one node address, no
    /// hairpin, the 4 static rules excluded) by traffic policy: the figures
    /// of the module documentation.
    #[test]
    fn rule_counts_by_external_traffic_policy() {
        let table: [(&str, Option<usize>, bool, usize); 6] = [
            ("Cluster", None, false, 24),
            ("Cluster, cluster CIDR", None, true, 25),
            ("Local, 3 local endpoints", Some(3), false, 28),
            ("Local, 3 local endpoints, cluster CIDR", Some(3), true, 30),
            ("Local, no local endpoint", Some(0), false, 25),
            ("Local, no local endpoint, cluster CIDR", Some(0), true, 27),
        ];
        for (name, local, cidr, want) in table {
            let backends: Vec<BackendView> = (0..10)
                .map(|i| backend(&format!("10.0.0.{}", i + 1), 8080))
                .collect();
            let cluster = cluster_ip(
                ("default", "web"),
                "http",
                "10.96.0.10",
                80,
                Protocol::Tcp,
                backends.clone(),
            );
            let local = local.map(|n| backends[..n].to_vec());
            let mut frontends = node_ports(&cluster, "192.168.1.10", 30080, local);
            frontends.push(cluster);
            let options = IptablesOptions {
                masquerade_hairpin: false,
                cluster_cidr: cidr.then(|| "10.0.0.0/16".parse().unwrap()),
                ..IptablesOptions::default()
            };
            let got = render(&frontends, &options, None);
            assert_eq!(got.rules - 4, want, "{name}\n{}", got.restore);
        }
    }
}
