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
//!                                                                            when SNAT is wanted)
//!          COX-SVC-<hash>  [-m recent --rcheck ─▶ SEP, per endpoint, with ClientIP affinity]
//!                          -m statistic --probability 1/n   ─▶ COX-SEP-<hash 1>
//!                          -m statistic --probability 1/(n-1) ─▶ COX-SEP-<hash 2>
//!                          ...                               ─▶ COX-SEP-<hash n>
//!          COX-SEP-<hash>  [-s <endpoint> ─▶ COX-MARK-MASQ   (hairpin)]
//!                          -p tcp -m tcp -j DNAT --to-destination ip:port
//!        POSTROUTING ─▶ COX-POSTROUTING: masquerade what COX-MARK-MASQ marked (0x4000)
//! filter INPUT, FORWARD, OUTPUT (ctstate NEW) ─▶ COX-SERVICES-FILTER:
//!          -d VIP -p tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
//!          for every frontend without endpoints
//! ```
//!
//! A ClusterIP with 10 endpoints is 21 rules (1 + 10 + 10), 31 with hairpin
//! masquerading. Chain names are kube-proxy's exactly, with `COX` for
//! `KUBE`: the first 16 characters of the base32 of the SHA-256 of
//! `namespace/name:port` + protocol (+ `ip:port` for an endpoint), so
//! `ns1/svc1:p80` over TCP is `COX-SVC-XPGD46QRK7WJZT7O` as it is
//! `KUBE-SVC-XPGD46QRK7WJZT7O` in kube-proxy.
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
//! Frontends in [`Scope::Local`] (external traffic under
//! `externalTrafficPolicy: Local`, which kube-proxy tells apart by source
//! in its `KUBE-EXT`/`KUBE-SVL` chains) are left out: the baselines model
//! scope-`All` traffic (ClusterIPs, and external traffic under `Cluster`).
//! NodePorts are matched per node address rather than with `-m addrtype
//! --dst-type LOCAL`; there is no cluster CIDR, so ClusterIP traffic is not
//! masqueraded (kube-proxy's default without `--cluster-cidr`). Frontends another Service owns
//! (`active == false`) are skipped, as the engine skips them.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;

use crate::FrontendKind;
use crate::keys::{Protocol, Scope};
use crate::model::ObjectRef;
use crate::view::{BackendView, FrontendView};
use coxswain_ebpf_common::service_flags;

/// Entry chain (nat): every frontend's match.
pub const SERVICES_CHAIN: &str = "COX-SERVICES";
/// Filter chain rejecting Services without endpoints.
pub const SERVICES_FILTER_CHAIN: &str = "COX-SERVICES-FILTER";
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
];

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
}

impl Default for IptablesOptions {
    fn default() -> Self {
        Self {
            masquerade_hairpin: true,
            shared_tables: true,
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
        for (index, variant) in group.variants.iter().enumerate() {
            if variant.backends.is_empty() {
                for frontend in &variant.frontends {
                    filter.rule(
                        SERVICES_FILTER_CHAIN,
                        format!(
                            "-m comment --comment \"{spn} has no endpoints\" {} -j REJECT --reject-with icmp-port-unreachable",
                            frontend_match(frontend)
                        ),
                    );
                }
                continue;
            }
            let svc_chain = service_chain(&spn, &proto, index);
            nat.declare(&svc_chain);
            let mut ext_chain = None;
            for frontend in &variant.frontends {
                let snat = frontend.flags & service_flags::SNAT != 0;
                let target = if snat {
                    ext_chain
                        .get_or_insert_with(|| {
                            let chain = external_chain(&spn, &proto, index);
                            nat.declare(&chain);
                            nat.rule(
                                &chain,
                                format!(
                                    "-m comment --comment \"masquerade traffic for {spn} external destinations\" -j {MARK_MASQ_CHAIN}"
                                ),
                            );
                            nat.rule(&chain, format!("-j {svc_chain}"));
                            chain
                        })
                        .clone()
                } else {
                    svc_chain.clone()
                };
                nat.rule(
                    SERVICES_CHAIN,
                    format!(
                        "-m comment --comment \"{spn} {}\" {} -j {target}",
                        kind_comment(frontend.kind),
                        frontend_match(frontend)
                    ),
                );
            }
            let seps: Vec<String> = variant
                .backends
                .iter()
                .map(|b| endpoint_chain(&spn, &proto, b))
                .collect();
            let comment = |b: &BackendView| {
                if comments {
                    format!("-m comment --comment \"{spn} -> {}:{}\" ", b.addr, b.port)
                } else {
                    String::new()
                }
            };
            if let Some(timeout) = group.affinity_timeout_s {
                for (b, sep) in variant.backends.iter().zip(&seps) {
                    nat.rule(
                        &svc_chain,
                        format!(
                            "{}-m recent --name {sep} --rcheck --seconds {timeout} --reap -j {sep}",
                            comment(b)
                        ),
                    );
                }
            }
            let n = seps.len();
            for (i, (b, sep)) in variant.backends.iter().zip(&seps).enumerate() {
                let statistic = if i + 1 < n {
                    format!(
                        "-m statistic --mode random --probability {} ",
                        probability(n - i)
                    )
                } else {
                    String::new()
                };
                nat.rule(&svc_chain, format!("{}{statistic}-j {sep}", comment(b)));
            }
            for (b, sep) in variant.backends.iter().zip(&seps) {
                // Variants of one port share their endpoints' chains.
                if !endpoint_chains.insert(sep.clone()) {
                    continue;
                }
                nat.declare(sep);
                let comment = if comments {
                    format!("-m comment --comment {spn} ")
                } else {
                    String::new()
                };
                if options.masquerade_hairpin {
                    nat.rule(
                        sep,
                        format!("{comment}-s {}/32 -j {MARK_MASQ_CHAIN}", b.addr),
                    );
                }
                let recent = if group.affinity_timeout_s.is_some() {
                    format!("-m recent --name {sep} --set ")
                } else {
                    String::new()
                };
                let p = &proto;
                nat.rule(
                    sep,
                    format!(
                        "{comment}-p {p} -m {p} {recent}-j DNAT --to-destination {}:{}",
                        b.addr, b.port
                    ),
                );
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
    /// Distinct backend lists, the longest (cluster-wide) first; a second
    /// one appears only under a `Local` traffic policy.
    pub variants: Vec<Variant<'a>>,
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
}

/// The frontends the baselines program (active, [`Scope::All`]), grouped
/// by Service port in the order of `frontends`.
pub(crate) fn port_groups(frontends: &[FrontendView]) -> Vec<PortGroup<'_>> {
    let mut index: BTreeMap<(&ObjectRef, &str, Protocol), usize> = BTreeMap::new();
    let mut groups: Vec<PortGroup<'_>> = Vec::new();
    for frontend in frontends
        .iter()
        .filter(|f| f.active && f.scope == Scope::All)
    {
        let key = (
            &frontend.service,
            frontend.port_name.as_str(),
            frontend.protocol,
        );
        let at = *index.entry(key).or_insert_with(|| {
            groups.push(PortGroup {
                service: &frontend.service,
                port_name: &frontend.port_name,
                protocol: frontend.protocol,
                affinity_timeout_s: None,
                variants: Vec::new(),
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
    for group in &mut groups {
        // Stable: equal lengths keep their order.
        group
            .variants
            .sort_by_key(|v| std::cmp::Reverse(v.backends.len()));
    }
    groups
}

/// Same endpoints in the same order (ids and flags do not matter here).
fn same_backends(a: &[BackendView], b: &[BackendView]) -> bool {
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
        let table: [(&str, usize, bool, Option<u32>, usize); 5] = [
            ("10 endpoints, kube-proxy defaults", 10, true, None, 31),
            (
                "10 endpoints, no hairpin (measured baseline)",
                10,
                false,
                None,
                21,
            ),
            ("1 endpoint", 1, true, None, 4),
            ("no endpoints: one REJECT", 0, true, None, 1),
            (
                "affinity adds a recent check per endpoint",
                10,
                false,
                Some(60),
                31,
            ),
        ];
        for (name, endpoints, hairpin, affinity, want) in table {
            let backends = (0..endpoints)
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
            frontend.affinity_timeout_s = affinity;
            let got = render(
                &[frontend],
                &IptablesOptions {
                    masquerade_hairpin: hairpin,
                    ..IptablesOptions::default()
                },
                None,
            );
            assert_eq!(got.rules - 4, want, "{name}");
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
                "*filter\n:COX-SERVICES-FILTER - [0:0]\n-A COX-SERVICES-FILTER -m comment --comment \"ns2/svc2 has no endpoints\" -d 172.30.0.42/32 -p udp -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable\nCOMMIT\n"
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

    #[test]
    fn inactive_and_local_scope_frontends_are_left_out() {
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
-A INPUT -m conntrack --ctstate NEW -m comment --comment "coxswain service portals" -j COX-SERVICES-FILTER
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "coxswain service portals" -j COX-SERVICES-FILTER
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "coxswain service portals" -j COX-SERVICES-FILTER
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
}
