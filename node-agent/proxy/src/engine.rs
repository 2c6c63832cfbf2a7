//! The sync engine: Kubernetes objects in, the difference for the affected
//! Services out, as map operations through [`ServiceMaps`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use coxswain_dataplane::{ServiceMaps, ServiceMapsDump, StaleBackend};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::desired::{DesiredMaster, desired_masters};
use crate::error::{Error, Result};
use crate::keys::{MasterKey, Protocol, addr_to_map, port_to_map};
use crate::model::{LbAlgorithm, NodeInfo, ObjectRef, ServiceModel, SliceModel};
use crate::programmed::{Programmed, Target};
use crate::view::{BackendView, FrontendView};

/// What one change did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Map operations applied.
    pub ops: usize,
    /// Services whose map entries were recomputed.
    pub services: usize,
    /// Master entries (frontend × scope) compared with the maps.
    pub frontends: usize,
    /// Nothing was written: the first [`ProxyState::full_resync`] has not
    /// run yet, and it will write this change with all the others.
    pub deferred: bool,
}

/// The service proxy's state: the Services and EndpointSlices it was given,
/// the map entries each Service wants, and what the maps hold.
///
/// Lifecycle: [`ProxyState::new`], [`ProxyState::adopt`] what a previous
/// agent left in the pinned maps, feed the initial lists of objects (nothing
/// is written yet: programming a Service before its slices arrive would
/// briefly reject its traffic), then [`ProxyState::full_resync`]; from then
/// on every change is written as it comes, at a cost proportional to the
/// Services it affects.
#[derive(Debug)]
pub struct ProxyState {
    node: NodeInfo,
    /// The algorithm of Services that do not name one.
    lb_algorithm: LbAlgorithm,
    services: HashMap<ObjectRef, ServiceModel>,
    /// IPv4 slices by Service, then by slice name.
    slices: HashMap<ObjectRef, BTreeMap<String, SliceModel>>,
    /// Slice → the Service it is filed under in `slices`.
    slice_service: HashMap<ObjectRef, ObjectRef>,
    /// Services with NodePort frontends (the node's addresses matter).
    node_port_services: HashSet<ObjectRef>,
    /// What each Service wants.
    desired: HashMap<ObjectRef, BTreeMap<MasterKey, DesiredMaster>>,
    /// Services wanting each master key, sorted; the first one owns it.
    claims: HashMap<MasterKey, Vec<ObjectRef>>,
    programmed: Programmed,
    /// The first full resync ran.
    synced: bool,
    /// Master keys a failed sync did not finish.
    pending: BTreeSet<MasterKey>,
    /// Backends that left UDP or SCTP frontends since the last
    /// [`ProxyState::take_stale_backends`].
    stale: Vec<StaleBackend>,
}

impl ProxyState {
    /// An engine for `node` that assumes empty maps.
    pub fn new(node: NodeInfo) -> Self {
        Self {
            node,
            lb_algorithm: LbAlgorithm::default(),
            services: HashMap::new(),
            slices: HashMap::new(),
            slice_service: HashMap::new(),
            node_port_services: HashSet::new(),
            desired: HashMap::new(),
            claims: HashMap::new(),
            programmed: Programmed::new(),
            synced: false,
            pending: BTreeSet::new(),
            stale: Vec::new(),
        }
    }

    /// Sets the algorithm of Services without the
    /// [`LB_ALGORITHM_ANNOTATION`](crate::LB_ALGORITHM_ANNOTATION) (random
    /// when never set). Call before the first Service arrives.
    pub fn with_lb_algorithm(mut self, algorithm: LbAlgorithm) -> Self {
        self.lb_algorithm = algorithm;
        self
    }

    /// Takes what a previous agent left in the maps as the programmed state,
    /// keeping its backend and service ids for the same (address, port,
    /// protocol). The next [`ProxyState::full_resync`] then writes nothing
    /// for unchanged Services and deletes what is no longer wanted.
    pub fn adopt(&mut self, dump: ServiceMapsDump) -> Result<()> {
        if self.synced {
            return Err(Error::AdoptAfterSync);
        }
        self.programmed = Programmed::adopt(dump);
        Ok(())
    }

    /// Whether the first full resync ran (changes are written as they come).
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The Services this engine programs (those with map entries), for a
    /// relist to find which were deleted while a watch was down.
    pub fn known_services(&self) -> Vec<ObjectRef> {
        let mut out: Vec<_> = self.services.keys().cloned().collect();
        out.sort();
        out
    }

    /// The EndpointSlices this engine holds, likewise.
    pub fn known_slices(&self) -> Vec<ObjectRef> {
        let mut out: Vec<_> = self.slice_service.keys().cloned().collect();
        out.sort();
        out
    }

    /// The node this engine programs.
    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// Adds or replaces a Service.
    pub fn upsert_service(
        &mut self,
        maps: &mut impl ServiceMaps,
        service: &Service,
    ) -> Result<SyncReport> {
        let service_ref = ObjectRef::of(&service.metadata, "Service")?;
        let model = match ServiceModel::parse(service) {
            Ok(model) => Some(model),
            Err(reason) => {
                tracing::debug!(service = %service_ref, %reason, "Service gets no map entries");
                None
            }
        };
        if self.services.get(&service_ref) == model.as_ref() {
            return Ok(self.unchanged());
        }
        match model {
            Some(model) => {
                if model.uses_node_addresses() {
                    self.node_port_services.insert(service_ref.clone());
                } else {
                    self.node_port_services.remove(&service_ref);
                }
                self.services.insert(service_ref.clone(), model);
            }
            None => {
                self.node_port_services.remove(&service_ref);
                self.services.remove(&service_ref);
            }
        }
        self.sync(maps, [service_ref])
    }

    /// Removes a Service; its slices stay known until deleted.
    pub fn delete_service(
        &mut self,
        maps: &mut impl ServiceMaps,
        namespace: &str,
        name: &str,
    ) -> Result<SyncReport> {
        let service_ref = ObjectRef::new(namespace, name);
        self.node_port_services.remove(&service_ref);
        if self.services.remove(&service_ref).is_none() {
            return Ok(self.unchanged());
        }
        self.sync(maps, [service_ref])
    }

    /// Adds or replaces an EndpointSlice. Slices that are not IPv4 or carry
    /// no `kubernetes.io/service-name` label are ignored.
    pub fn upsert_endpoint_slice(
        &mut self,
        maps: &mut impl ServiceMaps,
        slice: &EndpointSlice,
    ) -> Result<SyncReport> {
        let slice_ref = ObjectRef::of(&slice.metadata, "EndpointSlice")?;
        let Some(model) = SliceModel::parse(slice) else {
            return self.delete_endpoint_slice(maps, &slice_ref.namespace, &slice_ref.name);
        };
        let service_ref = ObjectRef::new(slice_ref.namespace.clone(), model.service.clone());
        let previous = self.slice_service.get(&slice_ref).cloned();
        if previous.as_ref() == Some(&service_ref)
            && self
                .slices
                .get(&service_ref)
                .and_then(|slices| slices.get(&slice_ref.name))
                == Some(&model)
        {
            return Ok(self.unchanged());
        }
        if let Some(previous) = &previous
            && previous != &service_ref
        {
            self.unfile_slice(previous, &slice_ref.name);
        }
        self.slices
            .entry(service_ref.clone())
            .or_default()
            .insert(slice_ref.name.clone(), model);
        self.slice_service.insert(slice_ref, service_ref.clone());
        let mut affected = vec![service_ref];
        affected.extend(previous.filter(|p| p != &affected[0]));
        self.sync(maps, affected)
    }

    /// Removes an EndpointSlice.
    pub fn delete_endpoint_slice(
        &mut self,
        maps: &mut impl ServiceMaps,
        namespace: &str,
        name: &str,
    ) -> Result<SyncReport> {
        let Some(service_ref) = self.slice_service.remove(&ObjectRef::new(namespace, name)) else {
            return Ok(self.unchanged());
        };
        self.unfile_slice(&service_ref, name);
        self.sync(maps, [service_ref])
    }

    /// Changes the node's name or addresses: a new name changes which
    /// endpoints are local (every Service is recomputed), new addresses
    /// change the NodePort frontends (only Services with node ports are).
    pub fn set_node(&mut self, maps: &mut impl ServiceMaps, node: NodeInfo) -> Result<SyncReport> {
        let affected: Vec<ObjectRef> = if node.name != self.node.name {
            self.services.keys().cloned().collect()
        } else if node.addresses != self.node.addresses {
            self.node_port_services.iter().cloned().collect()
        } else {
            Vec::new()
        };
        self.node = node;
        self.sync(maps, affected)
    }

    /// Converges the maps to the wanted state: writes every difference and
    /// deletes every entry nothing wants (what a previous agent left
    /// included). Used once the initial lists are loaded, and to recover
    /// from failed writes. Costs time proportional to everything.
    pub fn full_resync(&mut self, maps: &mut impl ServiceMaps) -> Result<SyncReport> {
        let ops_before = self.programmed.ops();
        self.programmed.delete_garbage(maps)?;
        let keys: BTreeSet<MasterKey> = self
            .programmed
            .frontend_keys()
            .chain(self.claims.keys())
            .copied()
            .collect();
        let frontends = keys.len();
        self.converge(maps, keys)?;
        self.programmed.sweep_all(maps)?;
        self.synced = true;
        let report = SyncReport {
            ops: self.programmed.ops() - ops_before,
            services: self.desired.len(),
            frontends,
            deferred: false,
        };
        tracing::info!(
            ops = report.ops,
            services = report.services,
            frontends,
            "service maps resynced"
        );
        Ok(report)
    }

    /// Every frontend every Service wants, with its backends, sorted by
    /// Service, port and address; ids as programmed.
    pub fn desired(&self) -> Vec<FrontendView> {
        let mut services: Vec<&ObjectRef> = self.desired.keys().collect();
        services.sort_unstable();
        services
            .into_iter()
            .flat_map(|service| self.views(service))
            .collect()
    }

    /// The frontends of one Service (empty if it has none).
    pub fn service_frontends(&self, namespace: &str, name: &str) -> Vec<FrontendView> {
        self.views(&ObjectRef::new(namespace, name))
    }

    fn views(&self, service: &ObjectRef) -> Vec<FrontendView> {
        let Some(masters) = self.desired.get(service) else {
            return Vec::new();
        };
        let mut views: Vec<FrontendView> = masters
            .iter()
            .map(|(key, master)| FrontendView {
                service: service.clone(),
                port_name: master.port_name.clone(),
                kind: master.kind,
                addr: key.frontend.addr,
                port: key.frontend.port,
                protocol: key.frontend.protocol,
                scope: key.scope,
                flags: master.flags,
                affinity_timeout_s: (master.affinity_timeout_s != 0)
                    .then_some(master.affinity_timeout_s),
                service_id: self.programmed.service_id(&key.frontend),
                active: self.owner(key) == Some(service),
                backends: master
                    .backends
                    .iter()
                    .map(|b| BackendView {
                        addr: b.key.addr,
                        port: b.key.port,
                        flags: b.flags,
                        backend_id: self.programmed.backend_id(&b.key),
                    })
                    .collect(),
            })
            .collect();
        views.sort_by(|a, b| {
            (&a.port_name, a.kind, a.addr, a.port, a.protocol, a.scope).cmp(&(
                &b.port_name,
                b.kind,
                b.addr,
                b.port,
                b.protocol,
                b.scope,
            ))
        });
        views
    }

    fn owner(&self, key: &MasterKey) -> Option<&ObjectRef> {
        self.claims.get(key)?.first()
    }

    fn unchanged(&self) -> SyncReport {
        SyncReport {
            deferred: !self.synced,
            ..SyncReport::default()
        }
    }

    fn unfile_slice(&mut self, service: &ObjectRef, slice_name: &str) {
        if let Some(slices) = self.slices.get_mut(service) {
            slices.remove(slice_name);
            if slices.is_empty() {
                self.slices.remove(service);
            }
        }
    }

    /// Recomputes `services` and writes the master keys whose wanted entries
    /// changed.
    fn sync(
        &mut self,
        maps: &mut impl ServiceMaps,
        services: impl IntoIterator<Item = ObjectRef>,
    ) -> Result<SyncReport> {
        let ops_before = self.programmed.ops();
        let mut keys = BTreeSet::new();
        let mut recomputed = 0;
        for service in services {
            recomputed += 1;
            self.recompute(service, &mut keys);
        }
        let frontends = keys.len();
        if !self.synced {
            return Ok(SyncReport {
                ops: 0,
                services: recomputed,
                frontends,
                deferred: true,
            });
        }
        keys.append(&mut self.pending);
        self.converge(maps, keys)?;
        self.programmed.sweep(maps)?;
        Ok(SyncReport {
            ops: self.programmed.ops() - ops_before,
            services: recomputed,
            frontends,
            deferred: false,
        })
    }

    /// Updates one Service's wanted entries and claims; adds the master keys
    /// whose wanted entries changed to `keys`.
    fn recompute(&mut self, service: ObjectRef, keys: &mut BTreeSet<MasterKey>) {
        let new = match self.services.get(&service) {
            Some(model) => {
                let slices = self.slices.get(&service);
                desired_masters(
                    model,
                    slices.into_iter().flat_map(BTreeMap::values),
                    &self.node,
                    self.lb_algorithm,
                )
            }
            None => BTreeMap::new(),
        };
        let old = self.desired.remove(&service).unwrap_or_default();
        for (key, before) in &old {
            self.note_stale(&service, *key, before, new.get(key));
            match new.get(key) {
                None => {
                    self.release_claim(*key, &service);
                    keys.insert(*key);
                }
                Some(after) if after != before => {
                    keys.insert(*key);
                }
                Some(_) => {}
            }
        }
        for key in new.keys() {
            if !old.contains_key(key) {
                self.claim(*key, &service);
                keys.insert(*key);
            }
        }
        if !new.is_empty() {
            self.desired.insert(service, new);
        }
    }

    /// Records the backends a connectionless frontend (UDP, SCTP) of
    /// `service` loses, when `service` is the one programmed there.
    fn note_stale(
        &mut self,
        service: &ObjectRef,
        key: MasterKey,
        before: &DesiredMaster,
        after: Option<&DesiredMaster>,
    ) {
        if !matches!(key.frontend.protocol, Protocol::Udp | Protocol::Sctp)
            || self.owner(&key) != Some(service)
        {
            return;
        }
        let Some(service_id) = self.programmed.service_id(&key.frontend) else {
            return;
        };
        for backend in &before.backends {
            let kept = after.is_some_and(|a| a.backends.iter().any(|b| b.key == backend.key));
            if !kept {
                self.stale.push(StaleBackend {
                    service_id,
                    addr: addr_to_map(backend.key.addr),
                    port: port_to_map(backend.key.port),
                    proto: key.frontend.protocol.number(),
                });
            }
        }
    }

    /// The backends that left UDP or SCTP frontends since the last call:
    /// once the maps no longer name them, their flows' conntrack entries
    /// must go (see [`StaleBackend`]), which the caller does (on the
    /// kernel's conntrack table, away from the sync path).
    pub fn take_stale_backends(&mut self) -> Vec<StaleBackend> {
        let mut stale = std::mem::take(&mut self.stale);
        stale.sort_unstable();
        stale.dedup();
        stale
    }

    fn claim(&mut self, key: MasterKey, service: &ObjectRef) {
        let claimants = self.claims.entry(key).or_default();
        if let Err(at) = claimants.binary_search(service) {
            claimants.insert(at, service.clone());
        }
        if claimants.len() > 1 {
            tracing::warn!(frontend = %key, owner = %claimants[0], claimants = claimants.len(), "several Services use the same address and port; the first by namespace/name is programmed");
        }
    }

    fn release_claim(&mut self, key: MasterKey, service: &ObjectRef) {
        if let Some(claimants) = self.claims.get_mut(&key) {
            claimants.retain(|c| c != service);
            if claimants.is_empty() {
                self.claims.remove(&key);
            }
        }
    }

    /// Writes each key's owner's wanted entries (or deletes the entries of
    /// keys nobody wants). On failure the unfinished keys are kept for the
    /// next sync.
    fn converge(&mut self, maps: &mut impl ServiceMaps, keys: BTreeSet<MasterKey>) -> Result<()> {
        let mut keys = keys.into_iter();
        while let Some(key) = keys.next() {
            let target = self
                .claims
                .get(&key)
                .and_then(|claimants| claimants.first())
                .and_then(|owner| self.desired.get(owner)?.get(&key))
                .map(|master| Target {
                    flags: master.flags,
                    affinity_timeout_s: master.affinity_timeout_s,
                    backends: &master.backends,
                });
            if let Err(e) = self.programmed.converge(maps, key, target) {
                self.pending.insert(key);
                self.pending.extend(keys);
                return Err(e);
            }
        }
        Ok(())
    }
}
