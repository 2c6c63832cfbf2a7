//! The service proxy's control loop: watches Services, EndpointSlices and
//! this node's Node through any Kubernetes API server (kube-runtime), and
//! feeds every change to the sync engine, which writes the kernel maps.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use coxswain_dataplane::{Dataplane, MemoryServiceMaps, ServiceMaps};
use coxswain_proxy::{NodeInfo, ProxyState, SyncReport};
use futures::{StreamExt, stream};
use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use tracing::{debug, info, warn};

use tokio::sync::mpsc;

use crate::{
    api::NamesRequest,
    metrics::ProxyMetrics,
    rules::{RuleMode, RuleSyncer},
};

/// Where the proxy puts the wanted Services.
#[derive(Debug)]
pub enum ProxyTarget {
    /// The eBPF maps (the default).
    Ebpf(Arc<Mutex<Dataplane>>),
    /// kube-proxy-shaped netfilter rules, for comparison.
    Rules(RuleMode),
}

/// The least time between two netfilter syncs (kube-proxy's `--iptables-min-sync-period`
/// default): changes arriving meanwhile are applied together.
const MIN_RULE_SYNC: Duration = Duration::from_secs(1);

/// The netfilter side of [`ProxyTarget::Rules`]: the engine writes into memory maps, and
/// the rules follow at most once per [`MIN_RULE_SYNC`].
struct RuleTarget {
    maps: MemoryServiceMaps,
    syncer: RuleSyncer,
    dirty: bool,
    last: Option<Instant>,
}

/// What the proxy loop needs.
#[derive(Debug)]
pub struct ProxyConfig {
    /// A kubeconfig file; `None` infers (`$KUBECONFIG`, `~/.kube/config`,
    /// in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (endpoints with this `nodeName` are local).
    pub node_name: String,
    /// The algorithm of Services without the annotation.
    pub lb_algorithm: coxswain_proxy::LbAlgorithm,
    /// Where backends that left UDP/SCTP frontends go for their flows'
    /// conntrack entries to be deleted (the collector's thread); eBPF mode.
    pub stale_flows: Option<std::sync::mpsc::Sender<Vec<coxswain_dataplane::StaleBackend>>>,
    /// The pods' sources for the netfilter modes (`--cluster-cidr`).
    pub cluster_cidr: Option<coxswain_proxy::iptables::Ipv4Cidr>,
}

/// One event from any of the three watches.
#[allow(
    clippy::large_enum_variant,
    reason = "one event at a time flows through the loop; boxing would only add an allocation"
)]
enum Update {
    Service(watcher::Event<Service>),
    Slice(watcher::Event<EndpointSlice>),
    Node(watcher::Event<Node>),
}

/// Which kinds have finished their first list.
#[derive(Default)]
struct InitialLists {
    services: bool,
    slices: bool,
    node: bool,
}

/// Objects seen during a relist, to find those deleted while the watch was
/// down.
#[derive(Default)]
struct Relist {
    services: Option<BTreeSet<(String, String)>>,
    slices: Option<BTreeSet<(String, String)>>,
}

/// Connects to the API server and runs the loop until the watches end.
pub async fn run(
    config: ProxyConfig,
    target: ProxyTarget,
    metrics: ProxyMetrics,
    mut names: mpsc::Receiver<NamesRequest>,
) -> Result<()> {
    let client = client(config.kubeconfig.as_ref()).await?;
    let mut proxy = ProxyState::new(NodeInfo {
        name: config.node_name.clone(),
        addresses: Vec::new(),
    })
    .with_lb_algorithm(config.lb_algorithm);
    let (dataplane, mut rules) = match target {
        ProxyTarget::Ebpf(dataplane) => {
            let mut dp = lock(&dataplane);
            let dump = dp
                .service_maps()
                .dump()
                .context("failed to read the pinned service maps")?;
            info!(
                services = dump.services.len(),
                backends = dump.backends.len(),
                "adopting the service maps left by a previous agent"
            );
            proxy.adopt(dump)?;
            drop(dp);
            (Some(dataplane), None)
        }
        ProxyTarget::Rules(mode) => {
            info!(
                ?mode,
                cluster_cidr = ?config.cluster_cidr,
                "netfilter proxy mode: rules are rewritten at most once a second"
            );
            (
                None,
                Some(RuleTarget {
                    maps: MemoryServiceMaps::default(),
                    syncer: RuleSyncer::new(mode, config.cluster_cidr),
                    dirty: false,
                    last: None,
                }),
            )
        }
    };

    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| e.map(Update::Service));
    let slices = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| e.map(Update::Slice));
    let node_cfg =
        watcher::Config::default().fields(&format!("metadata.name={}", config.node_name));
    let nodes = watcher(Api::<Node>::all(client), node_cfg)
        .default_backoff()
        .map(|e| e.map(Update::Node));
    let mut updates = stream::select_all([services.boxed(), slices.boxed(), nodes.boxed()]);

    let mut initial = InitialLists::default();
    let mut relist = Relist::default();
    info!(node = %config.node_name, "service proxy watching Services, EndpointSlices and the Node");
    loop {
        let rule_sync_due = rules.as_ref().and_then(|r| {
            (r.dirty && proxy.is_synced())
                .then(|| r.last.map_or_else(Instant::now, |t| t + MIN_RULE_SYNC))
        });
        let update = tokio::select! {
            update = updates.next() => match update {
                Some(update) => update,
                None => break,
            },
            Some(reply) = names.recv() => {
                let owners = proxy
                    .desired()
                    .into_iter()
                    .filter(|f| f.active)
                    .filter_map(|f| Some((f.service_id?, format!("{}:{}", f.service, f.port_name).trim_end_matches(':').to_owned())))
                    .collect();
                let _ = reply.send(owners);
                continue;
            }
            () = sleep_until_due(rule_sync_due), if rule_sync_due.is_some() => {
                if let Some(r) = rules.as_mut() {
                    sync_rules(&proxy, r, &metrics);
                }
                continue;
            }
        };
        let update = match update {
            Ok(update) => update,
            Err(e) => {
                warn!(error = %e, "watch error; retrying with backoff");
                continue;
            }
        };
        let start = Instant::now();
        let result = match (&dataplane, rules.as_mut()) {
            (Some(dataplane), _) => {
                let mut dp = lock(dataplane);
                if let Update::Node(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) =
                    &update
                {
                    // External flows to backends on other nodes leave with the
                    // node's first address as their source.
                    let snat = node_info(n).addresses.first().copied();
                    if let Err(e) = dp.set_snat_address(snat) {
                        warn!(error = %e, "failed to set the SNAT address");
                    }
                }
                apply(&mut proxy, dp.service_maps(), update, &mut initial, &mut relist)
            }
            (None, Some(r)) => {
                let result = apply(&mut proxy, &mut r.maps, update, &mut initial, &mut relist);
                // The memory maps log every operation for tests; nothing reads it here.
                r.maps.ops.clear();
                if matches!(&result, Ok(Some(report)) if report.ops > 0) {
                    r.dirty = true;
                }
                result
            }
            (None, None) => unreachable!("one proxy target is always set"),
        };
        match result {
            Ok(Some(report)) if report.ops > 0 => {
                metrics.observe(start.elapsed(), report.ops);
                debug!(
                    ops = report.ops,
                    services = report.services,
                    elapsed_us = start.elapsed().as_micros() as u64,
                    "synced"
                );
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "sync failed; the next change or resync retries"),
        }
        if !proxy.is_synced() && initial.services && initial.slices && initial.node {
            let report = match (&dataplane, rules.as_mut()) {
                (Some(dataplane), _) => proxy.full_resync(lock(dataplane).service_maps())?,
                (None, Some(r)) => {
                    let report = proxy.full_resync(&mut r.maps)?;
                    r.dirty = true;
                    sync_rules(&proxy, r, &metrics);
                    report
                }
                (None, None) => unreachable!("one proxy target is always set"),
            };
            metrics.observe(start.elapsed(), report.ops);
            info!(
                ops = report.ops,
                elapsed_ms = start.elapsed().as_millis() as u64,
                "initial sync done"
            );
        }
        // After the maps stopped naming them: no new flow can reach the
        // departed backends, so deleting their flows' entries is final.
        let stale = proxy.take_stale_backends();
        if !stale.is_empty()
            && dataplane.is_some()
            && let Some(tx) = &config.stale_flows
        {
            let _ = tx.send(stale);
        }
    }
    Ok(())
}

fn apply(
    proxy: &mut ProxyState,
    maps: &mut impl ServiceMaps,
    update: Update,
    initial: &mut InitialLists,
    relist: &mut Relist,
) -> coxswain_proxy::Result<Option<SyncReport>> {
    use watcher::Event;
    let key = |o: &dyn ResourceExtDyn| (o.ns(), o.name());
    Ok(match update {
        Update::Service(Event::Init) => {
            relist.services = Some(BTreeSet::new());
            None
        }
        Update::Service(Event::InitApply(s) | Event::Apply(s)) => {
            if let Some(seen) = relist.services.as_mut() {
                seen.insert(key(&s));
            }
            Some(proxy.upsert_service(maps, &s)?)
        }
        Update::Service(Event::Delete(s)) => {
            Some(proxy.delete_service(maps, &s.namespace().unwrap_or_default(), &s.name_any())?)
        }
        Update::Service(Event::InitDone) => {
            initial.services = true;
            let seen = relist.services.take().unwrap_or_default();
            let mut last = None;
            for gone in proxy.known_services() {
                if !seen.contains(&(gone.namespace.clone(), gone.name.clone())) {
                    last = Some(proxy.delete_service(maps, &gone.namespace, &gone.name)?);
                }
            }
            last
        }
        Update::Slice(Event::Init) => {
            relist.slices = Some(BTreeSet::new());
            None
        }
        Update::Slice(Event::InitApply(s) | Event::Apply(s)) => {
            if let Some(seen) = relist.slices.as_mut() {
                seen.insert(key(&s));
            }
            Some(proxy.upsert_endpoint_slice(maps, &s)?)
        }
        Update::Slice(Event::Delete(s)) => Some(proxy.delete_endpoint_slice(
            maps,
            &s.namespace().unwrap_or_default(),
            &s.name_any(),
        )?),
        Update::Slice(Event::InitDone) => {
            initial.slices = true;
            // Slices deleted while the watch was down are absent from the
            // relist.
            let seen = relist.slices.take().unwrap_or_default();
            let mut last = None;
            for gone in proxy.known_slices() {
                if !seen.contains(&(gone.namespace.clone(), gone.name.clone())) {
                    last = Some(proxy.delete_endpoint_slice(maps, &gone.namespace, &gone.name)?);
                }
            }
            last
        }
        Update::Node(Event::InitApply(n) | Event::Apply(n)) => {
            Some(proxy.set_node(maps, node_info(&n))?)
        }
        Update::Node(Event::InitDone) => {
            initial.node = true;
            None
        }
        Update::Node(_) => None,
    })
}

/// `ns()` and `name()` of any object, as owned strings.
trait ResourceExtDyn {
    fn ns(&self) -> String;
    fn name(&self) -> String;
}

impl<K: ResourceExt> ResourceExtDyn for K {
    fn ns(&self) -> String {
        // As the engine files them: `default` when the object has none.
        self.namespace().unwrap_or_else(|| "default".to_owned())
    }
    fn name(&self) -> String {
        self.name_any()
    }
}

fn node_info(node: &Node) -> NodeInfo {
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse::<Ipv4Addr>().ok())
        .collect();
    NodeInfo {
        name: node.name_any(),
        addresses,
    }
}

async fn client(kubeconfig: Option<&PathBuf>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("failed to read --kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .with_context(|| format!("failed to use --kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("failed to find a kubeconfig (give --kubeconfig)")?,
    };
    Client::try_from(config).context("failed to build the API client")
}

async fn sleep_until_due(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due.into()).await;
    }
}

/// Rewrites the netfilter rules from the engine's wanted state. A failure is logged and
/// retried after the next interval (the state stays dirty).
fn sync_rules(proxy: &ProxyState, rules: &mut RuleTarget, metrics: &ProxyMetrics) {
    let start = Instant::now();
    let desired = proxy.desired();
    // iptables-restore can take seconds on large rule sets: keep the runtime's other tasks
    // (the agent API, metrics) going meanwhile.
    let result = tokio::task::block_in_place(|| rules.syncer.sync(&desired));
    rules.last = Some(Instant::now());
    match result {
        Ok(count) => {
            rules.dirty = false;
            metrics.observe(start.elapsed(), count);
            info!(
                rules = count,
                frontends = desired.len(),
                elapsed_ms = start.elapsed().as_millis() as u64,
                "netfilter rules rewritten"
            );
        }
        Err(e) => warn!(error = %format!("{e:#}"), "netfilter sync failed; retrying"),
    }
}

fn lock(dataplane: &Mutex<Dataplane>) -> std::sync::MutexGuard<'_, Dataplane> {
    dataplane.lock().unwrap_or_else(|e| e.into_inner())
}
