//! The service proxy's control loop: watches Services, EndpointSlices and
//! this node's Node through any Kubernetes API server (kube-runtime), and
//! feeds every change to the sync engine, which writes the kernel maps.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::{Context, Result};
use coxswain_dataplane::{Dataplane, ServiceMaps};
use coxswain_proxy::{NodeInfo, ProxyState, SyncReport};
use futures::{StreamExt, stream};
use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use tracing::{debug, info, warn};

use tokio::sync::mpsc;

use crate::{api::NamesRequest, metrics::ProxyMetrics};

/// What the proxy loop needs.
#[derive(Debug)]
pub struct ProxyConfig {
    /// A kubeconfig file; `None` infers (`$KUBECONFIG`, `~/.kube/config`,
    /// in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (endpoints with this `nodeName` are local).
    pub node_name: String,
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
    dataplane: Arc<Mutex<Dataplane>>,
    metrics: ProxyMetrics,
    mut names: mpsc::Receiver<NamesRequest>,
) -> Result<()> {
    let client = client(config.kubeconfig.as_ref()).await?;
    let mut proxy = ProxyState::new(NodeInfo {
        name: config.node_name.clone(),
        addresses: Vec::new(),
    });
    {
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
    }

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
        };
        let update = match update {
            Ok(update) => update,
            Err(e) => {
                warn!(error = %e, "watch error; retrying with backoff");
                continue;
            }
        };
        let start = Instant::now();
        let mut dp = lock(&dataplane);
        if let Update::Node(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) = &update {
            // External flows to backends on other nodes leave with the
            // node's first address as their source.
            let snat = node_info(n).addresses.first().copied();
            if let Err(e) = dp.set_snat_address(snat) {
                warn!(error = %e, "failed to set the SNAT address");
            }
        }
        let maps = dp.service_maps();
        let result = apply(&mut proxy, maps, update, &mut initial, &mut relist);
        drop(dp);
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
            let mut dp = lock(&dataplane);
            let report = proxy.full_resync(dp.service_maps())?;
            metrics.observe(start.elapsed(), report.ops);
            info!(
                ops = report.ops,
                elapsed_ms = start.elapsed().as_millis() as u64,
                "initial sync done"
            );
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

fn lock(dataplane: &Mutex<Dataplane>) -> std::sync::MutexGuard<'_, Dataplane> {
    dataplane.lock().unwrap_or_else(|e| e.into_inner())
}
