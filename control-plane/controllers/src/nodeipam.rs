//! Node IPAM: gives every node `spec.podCIDR` and `spec.podCIDRs`, a distinct
//! `/node_cidr_mask_size` block of the cluster CIDR (upstream's range allocator).
//!
//! The allocation lives only in the Nodes: each (re)list of the watch rebuilds the set of
//! taken blocks from the nodes that have one, before any new block is handed out, so a
//! restarted (or newly elected) manager never gives out a block twice. A deleted node's
//! block is released. When the range is exhausted the node gets a `CIDRNotAvailable`
//! Warning Event and is retried when a block frees up.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use coxswain_runtime::events::{EventType, Recorder, object_ref};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::ResourceExt;
use serde_json::json;
use tracing::{info, warn};

use crate::Context;

/// The controller's name in `--controllers`.
pub const NAME: &str = "nodeipam";
/// `source.component` of its Events (upstream's range allocator).
pub const COMPONENT: &str = "cidrAllocator";

/// Errors of node IPAM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--cluster-cidr` or `--node-cidr-mask-size` is unusable.
    #[error("invalid node IPAM configuration: {0}")]
    Config(String),
    /// Writing a node's pod CIDR failed.
    #[error("failed to set the pod CIDR of node {node}: {source}")]
    Patch {
        node: String,
        #[source]
        source: kube::Error,
    },
    /// The node watch failed for good.
    #[error("failed to watch nodes: {0}")]
    Watch(#[source] watcher::Error),
    /// The node watch ended.
    #[error("failed to run node IPAM: the node watch ended")]
    Stopped,
}

/// An IPv4 CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub base: u32,
    pub prefix: u8,
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (want a.b.c.d/n)"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix: u8 = prefix.parse().map_err(|e| format!("{s:?}: {e}"))?;
        if prefix > 32 {
            return Err(format!("{s:?}: prefix longer than 32"));
        }
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
        Ok(Ipv4Cidr {
            base: u32::from(addr) & mask,
            prefix,
        })
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

/// Which blocks of the cluster CIDR are taken.
#[derive(Debug)]
pub struct CidrSet {
    cluster: Ipv4Cidr,
    mask: u8,
    taken: BTreeSet<u32>,
    /// Node name -> block index.
    owners: BTreeMap<String, u32>,
}

impl CidrSet {
    /// Blocks of `/mask` within `cluster`.
    pub fn new(cluster: Ipv4Cidr, mask: u8) -> Result<CidrSet, Error> {
        if mask < cluster.prefix || mask > 32 {
            return Err(Error::Config(format!(
                "node CIDR mask size /{mask} must be between the cluster CIDR's /{} and /32",
                cluster.prefix
            )));
        }
        if mask - cluster.prefix > 24 {
            return Err(Error::Config(format!(
                "/{mask} blocks of {cluster} are too many (more than 2^24)"
            )));
        }
        Ok(CidrSet {
            cluster,
            mask,
            taken: BTreeSet::new(),
            owners: BTreeMap::new(),
        })
    }

    fn blocks(&self) -> u32 {
        1u32 << (self.mask - self.cluster.prefix)
    }

    fn block(&self, index: u32) -> Ipv4Cidr {
        Ipv4Cidr {
            base: self.cluster.base + (index << (32 - u32::from(self.mask))),
            prefix: self.mask,
        }
    }

    /// The index of `cidr` if it is one of our blocks.
    fn index_of(&self, cidr: &str) -> Option<u32> {
        let c: Ipv4Cidr = cidr.parse().ok()?;
        if c.prefix != self.mask {
            return None;
        }
        let offset = c.base.checked_sub(self.cluster.base)?;
        let index = offset >> (32 - u32::from(self.mask));
        (index < self.blocks()).then_some(index)
    }

    /// Records that `node` holds `cidr` (ignored when it is not one of our blocks).
    pub fn occupy(&mut self, node: &str, cidr: &str) {
        if let Some(i) = self.index_of(cidr) {
            self.taken.insert(i);
            self.owners.insert(node.to_owned(), i);
        }
    }

    /// A free block for `node`, or `None` when the range is exhausted.
    pub fn allocate(&mut self, node: &str) -> Option<Ipv4Cidr> {
        if let Some(&i) = self.owners.get(node) {
            return Some(self.block(i));
        }
        let i = (0..self.blocks()).find(|i| !self.taken.contains(i))?;
        self.taken.insert(i);
        self.owners.insert(node.to_owned(), i);
        Some(self.block(i))
    }

    /// Frees the block of `node`.
    pub fn release(&mut self, node: &str) {
        if let Some(i) = self.owners.remove(node) {
            self.taken.remove(&i);
        }
    }

    /// Forgets every allocation.
    pub fn clear(&mut self) {
        self.taken.clear();
        self.owners.clear();
    }
}

fn pod_cidr(node: &Node) -> Option<String> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidr
        .clone()
        .or_else(|| spec.pod_cidrs.as_ref()?.first().cloned())
        .filter(|c| !c.is_empty())
}

struct Allocator {
    ctx: Context,
    cidrs: CidrSet,
    recorder: Recorder,
    /// Nodes still waiting for a block (range exhausted or a failed write).
    waiting: BTreeMap<String, Node>,
}

impl Allocator {
    async fn assign(&mut self, node: &Node) -> Result<(), Error> {
        let name = node.name_any();
        if pod_cidr(node).is_some() || node.metadata.deletion_timestamp.is_some() {
            self.waiting.remove(&name);
            return Ok(());
        }
        let Some(cidr) = self.cidrs.allocate(&name) else {
            warn!(node = %name, "no pod CIDR left to allocate");
            self.waiting.insert(name.clone(), node.clone());
            self.recorder
                .record(
                    &object_ref(node),
                    EventType::Warning,
                    "CIDRNotAvailable",
                    &format!(
                        "Node {name} status is now: CIDRNotAvailable (the cluster CIDR {} has no free /{} left)",
                        self.cidrs.cluster, self.cidrs.mask
                    ),
                )
                .await;
            return Ok(());
        };
        let api: Api<Node> = Api::all(self.ctx.client.clone());
        let patch = json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                info!(node = %name, %cidr, "allocated pod CIDR");
                self.waiting.remove(&name);
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                self.cidrs.release(&name);
                self.waiting.remove(&name);
                Ok(())
            }
            Err(source) => {
                self.cidrs.release(&name);
                self.waiting.insert(name.clone(), node.clone());
                Err(Error::Patch { node: name, source })
            }
        }
    }

    async fn retry_waiting(&mut self) {
        let waiting: Vec<Node> = self.waiting.values().cloned().collect();
        for node in waiting {
            let result = self.assign(&node).await;
            self.ctx.metrics().count(NAME, result.is_ok());
            if let Err(e) = result {
                warn!(error = %e, "pod CIDR allocation failed, will retry");
            }
        }
        self.ctx.metrics().set_queue_depth(NAME, self.waiting.len());
    }
}

/// Runs node IPAM until the node watch ends.
pub async fn run(ctx: Context) -> Result<(), Error> {
    let cluster: Ipv4Cidr = ctx.config.cluster_cidr.parse().map_err(Error::Config)?;
    let cidrs = CidrSet::new(cluster, ctx.config.node_cidr_mask_size)?;
    let client = ctx.client.clone();
    let mut alloc = Allocator {
        recorder: Recorder::new(client.clone(), COMPONENT, None),
        ctx,
        cidrs,
        waiting: BTreeMap::new(),
    };
    info!(%cluster, mask = alloc.cidrs.mask, "starting node IPAM");
    let mut events = std::pin::pin!(
        watcher(Api::<Node>::all(client), watcher::Config::default()).default_backoff()
    );
    // Nodes seen during a (re)list, allocated only once the whole list is known.
    let mut listing: Vec<Node> = Vec::new();
    let mut retry = tokio::time::interval(std::time::Duration::from_secs(5));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            event = events.try_next() => event,
            _ = retry.tick() => {
                alloc.retry_waiting().await;
                continue;
            }
        };
        let event = match event {
            Ok(Some(event)) => event,
            Ok(None) => return Err(Error::Stopped),
            Err(e) => {
                // default_backoff already paces retries; keep going.
                warn!(error = %e, "node watch error");
                continue;
            }
        };
        match event {
            watcher::Event::Init => listing.clear(),
            watcher::Event::InitApply(node) => listing.push(node),
            watcher::Event::InitDone => {
                alloc.cidrs.clear();
                alloc.waiting.clear();
                for node in &listing {
                    if let Some(cidr) = pod_cidr(node) {
                        alloc.cidrs.occupy(&node.name_any(), &cidr);
                    }
                }
                for node in std::mem::take(&mut listing) {
                    alloc.waiting.insert(node.name_any(), node);
                }
                alloc.retry_waiting().await;
            }
            watcher::Event::Apply(node) => {
                if let Some(cidr) = pod_cidr(&node) {
                    alloc.cidrs.occupy(&node.name_any(), &cidr);
                    alloc.waiting.remove(&node.name_any());
                    continue;
                }
                alloc.waiting.insert(node.name_any(), node);
                alloc.retry_waiting().await;
            }
            watcher::Event::Delete(node) => {
                let name = node.name_any();
                alloc.cidrs.release(&name);
                alloc.waiting.remove(&name);
                info!(node = %name, "released pod CIDR");
                // A freed block may unblock a waiting node.
                alloc.retry_waiting().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_distinct_blocks_and_reuses_released_ones() {
        let mut set = CidrSet::new("10.244.0.0/22".parse().unwrap(), 24).unwrap();
        let a = set.allocate("a").unwrap().to_string();
        let b = set.allocate("b").unwrap().to_string();
        assert_eq!((a.as_str(), b.as_str()), ("10.244.0.0/24", "10.244.1.0/24"));
        assert_eq!(set.allocate("a").unwrap().to_string(), a, "idempotent per node");
        set.occupy("c", "10.244.3.0/24");
        assert_eq!(set.allocate("d").unwrap().to_string(), "10.244.2.0/24");
        assert!(set.allocate("e").is_none(), "exhausted");
        set.release("b");
        assert_eq!(set.allocate("e").unwrap().to_string(), "10.244.1.0/24");
        set.occupy("x", "192.168.0.0/24");
        assert!(set.allocate("y").is_none(), "foreign CIDRs take nothing");
    }

    #[test]
    fn rejects_bad_masks() {
        assert!(CidrSet::new("10.0.0.0/16".parse().unwrap(), 8).is_err());
        assert!("10.0.0.0".parse::<Ipv4Cidr>().is_err());
        assert_eq!("10.1.2.3/16".parse::<Ipv4Cidr>().unwrap().to_string(), "10.1.0.0/16");
    }
}
