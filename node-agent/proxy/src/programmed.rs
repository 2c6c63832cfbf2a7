//! What the service maps hold, as this agent knows it, and the ordered map
//! operations that move one frontend from what the maps hold to its target.
//!
//! Every operation keeps the maps consistent for the kernel, which reads
//! them between any two operations: a master counting `n` slots has slots
//! `1..=n`, each naming an existing backend, and its reverse-NAT entry.
//! Hence the order, per frontend: new backends, then slots the kernel cannot
//! reach yet or in-place slot replacements, then the reverse-NAT entry, then
//! the master; when shrinking, the master first; slots above the count after
//! the master; backends and reverse-NAT entries nothing names any more last,
//! in [`Programmed::sweep`].
//!
//! Ids: a backend id per (address, port, protocol), refcounted by the slots
//! naming it; a service id per frontend (address, port, protocol), refcounted
//! by its masters (one per scope). Both are freed, and reused lowest first,
//! only once nothing names them.

use std::collections::{BTreeSet, HashMap};

use coxswain_dataplane::{ServiceMaps, ServiceMapsDump};
use coxswain_ebpf_common::{
    BACKENDS_MAX_ENTRIES, BackendV4, MaglevKeyV4, REV_NAT_MAX_ENTRIES, RevNatV4, ServiceKeyV4,
    ServiceValue, service_flags,
};

use crate::desired::DesiredBackend;
use crate::error::{Error, Result};
use crate::ids::IdAllocator;
use crate::keys::{BackendKey, FrontendKey, MasterKey};
use crate::maglev;

/// What one master entry should hold; ids are resolved here.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target<'a> {
    pub flags: u16,
    pub affinity_timeout_s: u32,
    pub backends: &'a [DesiredBackend],
}

/// The maps' content as this agent knows it, with the id bookkeeping.
#[derive(Debug)]
pub(crate) struct Programmed {
    frontends: HashMap<MasterKey, FrontendState>,
    backends: HashMap<u32, BackendState>,
    backend_ids: HashMap<BackendKey, u32>,
    backend_alloc: IdAllocator,
    services: HashMap<u32, ServiceIdState>,
    service_ids: HashMap<FrontendKey, u32>,
    service_alloc: IdAllocator,
    /// Service map keys found at adoption that this engine never writes
    /// (unknown protocol or scope, padding): deleted by the first resync.
    garbage: Vec<ServiceKeyV4>,
    /// Maglev tables in the map, by key, as digests of their content.
    maglev: HashMap<MaglevKeyV4, u64>,
    /// Backends whose references changed: deleted or re-flagged by `sweep`.
    backend_candidates: BTreeSet<u32>,
    /// Service ids whose references changed: released by `sweep`.
    service_candidates: BTreeSet<u32>,
    /// Map operations applied so far.
    ops: usize,
}

/// One master key's entries: the master and its slots (slot `i` at index
/// `i - 1`), as present in the map. Slots above the master's count exist
/// while a frontend grows or shrinks, or when adopted from a crashed agent.
#[derive(Debug, Default)]
struct FrontendState {
    master: Option<ServiceValue>,
    slots: Vec<Option<SlotState>>,
}

impl FrontendState {
    fn slot(&self, slot: usize) -> Option<&SlotState> {
        self.slots.get(slot - 1)?.as_ref()
    }

    fn is_empty(&self) -> bool {
        self.master.is_none() && self.slots.is_empty()
    }
}

#[derive(Clone, Copy, Debug)]
struct SlotState {
    value: ServiceValue,
    /// The backend flags the Service that wrote the slot wants.
    flags: u8,
}

#[derive(Debug)]
struct BackendState {
    /// `None` for an adopted backend with an unknown protocol.
    key: Option<BackendKey>,
    /// `None` while allocated but not yet written.
    value: Option<BackendV4>,
    /// Slots naming this backend.
    refs: u32,
    /// Per flag bit, how many of those slots want it. The backend carries
    /// the union: a backend shared by Services whose slices momentarily
    /// disagree (one already says terminating) is flagged by the one that
    /// knows more.
    flag_refs: [u32; 8],
}

impl BackendState {
    fn count_flags(&mut self, flags: u8, add: bool) {
        for (bit, count) in self.flag_refs.iter_mut().enumerate() {
            if flags & (1 << bit) != 0 {
                if add {
                    *count += 1;
                } else {
                    *count = count.saturating_sub(1);
                }
            }
        }
    }

    fn wanted_flags(&self) -> u8 {
        self.flag_refs
            .iter()
            .enumerate()
            .filter(|&(_, &count)| count > 0)
            .fold(0, |flags, (bit, _)| flags | (1 << bit))
    }
}

#[derive(Debug, Default)]
struct ServiceIdState {
    /// The frontend the id was allocated or adopted for; `None` for an
    /// adopted reverse-NAT entry no master names.
    frontend: Option<FrontendKey>,
    /// The reverse-NAT entry, when written.
    rev_nat: Option<RevNatV4>,
    /// Masters naming this id.
    refs: u32,
}

/// The Maglev map key of `key`'s master entry with `service_id`.
fn maglev_key(service_id: u32, key: MasterKey) -> MaglevKeyV4 {
    MaglevKeyV4 {
        service_id,
        scope: key.scope.raw(),
        pad: [0; 3],
    }
}

fn slot_index(slot: usize) -> u16 {
    u16::try_from(slot).expect("slot numbers are bounded by desired::MAX_SLOTS")
}

impl Programmed {
    /// Empty maps.
    pub fn new() -> Self {
        Self {
            frontends: HashMap::new(),
            backends: HashMap::new(),
            backend_ids: HashMap::new(),
            backend_alloc: IdAllocator::new("backend", BACKENDS_MAX_ENTRIES),
            services: HashMap::new(),
            service_ids: HashMap::new(),
            service_alloc: IdAllocator::new("service", REV_NAT_MAX_ENTRIES),
            garbage: Vec::new(),
            maglev: HashMap::new(),
            backend_candidates: BTreeSet::new(),
            service_candidates: BTreeSet::new(),
            ops: 0,
        }
    }

    /// Maps a previous agent left: every entry is taken as programmed, and
    /// each (address, port, protocol) keeps the backend and service id it
    /// has there (the lowest, should a crash have left two), so that
    /// conntrack entries naming those ids stay valid.
    pub fn adopt(dump: ServiceMapsDump) -> Self {
        let mut this = Self::new();
        for (id, value) in dump.backends {
            let key = BackendKey::from_value(&value);
            this.backend_alloc.reserve(id);
            if let Some(key) = key {
                this.backend_ids.entry(key).or_insert(id);
            }
            this.backends.insert(
                id,
                BackendState {
                    key,
                    value: Some(value),
                    refs: 0,
                    flag_refs: [0; 8],
                },
            );
        }
        for (id, rev_nat) in dump.rev_nat {
            this.service_alloc.reserve(id);
            this.services.insert(
                id,
                ServiceIdState {
                    frontend: None,
                    rev_nat: Some(rev_nat),
                    refs: 0,
                },
            );
        }
        for (key, table) in &dump.maglev {
            this.maglev.insert(*key, maglev::digest(&table[..]));
        }
        for (raw, value) in dump.services {
            let Some((key, slot)) = MasterKey::from_entry(&raw) else {
                this.garbage.push(raw);
                continue;
            };
            let state = this.frontends.entry(key).or_default();
            if slot == 0 {
                state.master = Some(value);
                continue;
            }
            let index = usize::from(slot) - 1;
            if state.slots.len() <= index {
                state.slots.resize(index + 1, None);
            }
            state.slots[index] = Some(SlotState { value, flags: 0 });
        }
        // References, in key order so that conflicts resolve the same way
        // on every restart.
        let mut keys: Vec<MasterKey> = this.frontends.keys().copied().collect();
        keys.sort_unstable();
        for key in keys {
            let state = this.frontends.get_mut(&key).expect("key listed above");
            if let Some(master) = state.master {
                let id = master.service_id;
                this.service_alloc.reserve(id);
                let entry = this.services.entry(id).or_default();
                entry.refs += 1;
                if id != 0
                    && entry.frontend.is_none()
                    && !this.service_ids.contains_key(&key.frontend)
                {
                    entry.frontend = Some(key.frontend);
                    this.service_ids.insert(key.frontend, id);
                }
            }
            for slot in state.slots.iter_mut().flatten() {
                if let Some(backend) = this.backends.get_mut(&slot.value.backend_id) {
                    slot.flags = backend.value.map_or(0, |v| v.flags);
                    backend.refs += 1;
                    backend.count_flags(slot.flags, true);
                }
            }
        }
        this
    }

    /// Map operations applied since this state was created.
    pub fn ops(&self) -> usize {
        self.ops
    }

    /// Every master key with entries in the maps.
    pub fn frontend_keys(&self) -> impl Iterator<Item = &MasterKey> {
        self.frontends.keys()
    }

    /// The service id of a frontend, when it has one.
    pub fn service_id(&self, frontend: &FrontendKey) -> Option<u32> {
        self.service_ids.get(frontend).copied()
    }

    /// The backend id of an endpoint, when it has one.
    pub fn backend_id(&self, backend: &BackendKey) -> Option<u32> {
        self.backend_ids.get(backend).copied()
    }

    /// Deletes the adopted keys this engine never writes.
    pub fn delete_garbage(&mut self, maps: &mut impl ServiceMaps) -> Result<()> {
        while let Some(&key) = self.garbage.last() {
            maps.delete_service(key).map_err(|e| {
                Error::map_write(format!("delete unknown service entry {key:?}"), e)
            })?;
            self.ops += 1;
            self.garbage.pop();
        }
        Ok(())
    }

    /// Moves one master key's entries to `target` (`None`: delete them).
    /// Backends and service ids this leaves unreferenced are removed by the
    /// next [`Programmed::sweep`].
    pub fn converge(
        &mut self,
        maps: &mut impl ServiceMaps,
        key: MasterKey,
        target: Option<Target<'_>>,
    ) -> Result<()> {
        let mut state = self.frontends.remove(&key).unwrap_or_default();
        let result = match target {
            Some(target) => self.apply(maps, key, &mut state, target),
            None => self.remove(maps, key, &mut state),
        };
        while state.slots.last().is_some_and(Option::is_none) {
            state.slots.pop();
        }
        if !state.is_empty() {
            self.frontends.insert(key, state);
        }
        result
    }

    fn apply(
        &mut self,
        maps: &mut impl ServiceMaps,
        key: MasterKey,
        state: &mut FrontendState,
        target: Target<'_>,
    ) -> Result<()> {
        let service_id = self.service_id_for(key.frontend)?;
        // Backends first: nothing may name a backend that does not exist.
        let mut ids = Vec::with_capacity(target.backends.len());
        for backend in target.backends {
            ids.push(self.ensure_backend(maps, backend)?);
        }
        let count = ids.len();
        // The Maglev table names only backends that exist (written above,
        // deleted no earlier than the next sweep), so it may change before
        // or after the master: the kernel swaps a table value whole.
        let maglev_key = maglev_key(service_id, key);
        let wants_table = target.flags & service_flags::MAGLEV != 0 && count > 0;
        if wants_table {
            let members: Vec<(BackendKey, u32)> = target
                .backends
                .iter()
                .map(|b| b.key)
                .zip(ids.iter().copied())
                .collect();
            let table = maglev::table(&members).expect("count > 0");
            let digest = maglev::digest(&table[..]);
            if self.maglev.get(&maglev_key) != Some(&digest) {
                maps.update_maglev(maglev_key, &table).map_err(|e| {
                    Error::map_write(format!("update Maglev table of {key}"), e)
                })?;
                self.ops += 1;
                self.maglev.insert(maglev_key, digest);
            }
        }
        let master = ServiceValue {
            backend_id: 0,
            count: slot_index(count),
            flags: target.flags,
            service_id,
            affinity_timeout_s: target.affinity_timeout_s,
        };
        let live = state.master.map_or(0, |m| usize::from(m.count));
        // Shrinking: lower the count first, so the kernel stops picking the
        // slots about to go (slots 1..=count are all there already).
        if count < live && (1..=count).all(|slot| state.slot(slot).is_some()) {
            self.ensure_rev_nat(maps, service_id, key.frontend)?;
            self.write_master(maps, key, state, master)?;
        }
        // Slots: in-place replacements below the live count, new slots the
        // kernel does not reach until the master counts them.
        for (index, (&backend_id, backend)) in ids.iter().zip(target.backends).enumerate() {
            let slot = index + 1;
            let value = ServiceValue {
                backend_id,
                count: 0,
                flags: 0,
                service_id,
                affinity_timeout_s: 0,
            };
            match state.slots.get_mut(index).and_then(Option::as_mut) {
                Some(current) if current.value == value => {
                    if current.flags != backend.flags {
                        let old = std::mem::replace(&mut current.flags, backend.flags);
                        self.recount_flags(backend_id, old, backend.flags);
                    }
                }
                _ => self.write_slot(maps, key, state, slot, value, backend.flags)?,
            }
        }
        self.ensure_rev_nat(maps, service_id, key.frontend)?;
        if state.master != Some(master) {
            self.write_master(maps, key, state, master)?;
        }
        // Slots above the count: unreachable now.
        for slot in count + 1..=state.slots.len() {
            if state.slot(slot).is_some() {
                self.delete_slot(maps, key, state, slot)?;
            }
        }
        // A table the master no longer uses goes after the master stopped
        // pointing at it.
        if !wants_table {
            self.delete_maglev(maps, maglev_key)?;
        }
        Ok(())
    }

    fn delete_maglev(&mut self, maps: &mut impl ServiceMaps, key: MaglevKeyV4) -> Result<()> {
        if self.maglev.contains_key(&key) {
            maps.delete_maglev(key).map_err(|e| {
                Error::map_write(format!("delete Maglev table {key:?}"), e)
            })?;
            self.ops += 1;
            self.maglev.remove(&key);
        }
        Ok(())
    }

    fn remove(
        &mut self,
        maps: &mut impl ServiceMaps,
        key: MasterKey,
        state: &mut FrontendState,
    ) -> Result<()> {
        if state.master.is_some() {
            maps.delete_service(key.entry(0))
                .map_err(|e| Error::map_write(format!("delete master of {key}"), e))?;
            self.ops += 1;
            if let Some(old) = state.master.take() {
                self.delete_maglev(maps, maglev_key(old.service_id, key))?;
                self.unref_service_id(old.service_id);
            }
        }
        for slot in 1..=state.slots.len() {
            if state.slot(slot).is_some() {
                self.delete_slot(maps, key, state, slot)?;
            }
        }
        Ok(())
    }

    /// Deletes the backends and reverse-NAT entries whose last reference
    /// went since the previous sweep (freeing their ids), and re-flags the
    /// backends whose references' flags changed.
    pub fn sweep(&mut self, maps: &mut impl ServiceMaps) -> Result<()> {
        let service_ids = std::mem::take(&mut self.service_candidates);
        let mut pending = service_ids.into_iter();
        while let Some(id) = pending.next() {
            if let Err(e) = self.sweep_service_id(maps, id) {
                self.service_candidates.insert(id);
                self.service_candidates.extend(pending);
                return Err(e);
            }
        }
        let backend_ids = std::mem::take(&mut self.backend_candidates);
        let mut pending = backend_ids.into_iter();
        while let Some(id) = pending.next() {
            if let Err(e) = self.sweep_backend(maps, id) {
                self.backend_candidates.insert(id);
                self.backend_candidates.extend(pending);
                return Err(e);
            }
        }
        Ok(())
    }

    /// [`Programmed::sweep`] over every id, not only those that changed:
    /// removes what an adopted state held that nothing names.
    pub fn sweep_all(&mut self, maps: &mut impl ServiceMaps) -> Result<()> {
        let used: BTreeSet<MaglevKeyV4> = self
            .frontends
            .iter()
            .filter_map(|(key, state)| {
                let master = state.master?;
                (master.flags & service_flags::MAGLEV != 0 && master.count > 0)
                    .then(|| maglev_key(master.service_id, *key))
            })
            .collect();
        let unused: Vec<MaglevKeyV4> =
            self.maglev.keys().filter(|k| !used.contains(k)).copied().collect();
        for key in unused {
            self.delete_maglev(maps, key)?;
        }
        self.service_candidates.extend(self.services.keys());
        self.backend_candidates.extend(self.backends.keys());
        self.sweep(maps)
    }

    fn sweep_service_id(&mut self, maps: &mut impl ServiceMaps, id: u32) -> Result<()> {
        let Some(state) = self.services.get_mut(&id) else {
            return Ok(());
        };
        if state.refs > 0 {
            return Ok(());
        }
        if state.rev_nat.is_some() {
            maps.delete_rev_nat(id)
                .map_err(|e| Error::map_write(format!("delete rev_nat entry {id}"), e))?;
            self.ops += 1;
        }
        let state = self.services.remove(&id).expect("looked up above");
        if let Some(frontend) = state.frontend
            && self.service_ids.get(&frontend) == Some(&id)
        {
            self.service_ids.remove(&frontend);
        }
        self.service_alloc.release(id);
        Ok(())
    }

    fn sweep_backend(&mut self, maps: &mut impl ServiceMaps, id: u32) -> Result<()> {
        let Some(state) = self.backends.get_mut(&id) else {
            return Ok(());
        };
        if state.refs > 0 {
            let wanted = state.wanted_flags();
            if let Some(value) = state.value
                && value.flags != wanted
            {
                let value = BackendV4 {
                    flags: wanted,
                    ..value
                };
                maps.update_backend(id, value)
                    .map_err(|e| Error::map_write(format!("update backend {id}"), e))?;
                self.ops += 1;
                state.value = Some(value);
            }
            return Ok(());
        }
        if state.value.is_some() {
            maps.delete_backend(id)
                .map_err(|e| Error::map_write(format!("delete backend {id}"), e))?;
            self.ops += 1;
        }
        let state = self.backends.remove(&id).expect("looked up above");
        if let Some(key) = state.key
            && self.backend_ids.get(&key) == Some(&id)
        {
            self.backend_ids.remove(&key);
        }
        self.backend_alloc.release(id);
        Ok(())
    }

    /// The frontend's service id, allocated on first use.
    fn service_id_for(&mut self, frontend: FrontendKey) -> Result<u32> {
        if let Some(&id) = self.service_ids.get(&frontend) {
            return Ok(id);
        }
        let id = self.service_alloc.allocate()?;
        self.service_ids.insert(frontend, id);
        self.services.insert(
            id,
            ServiceIdState {
                frontend: Some(frontend),
                rev_nat: None,
                refs: 0,
            },
        );
        // Released by the next sweep should nothing come to name it.
        self.service_candidates.insert(id);
        Ok(id)
    }

    fn ensure_rev_nat(
        &mut self,
        maps: &mut impl ServiceMaps,
        id: u32,
        frontend: FrontendKey,
    ) -> Result<()> {
        let wanted = frontend.rev_nat();
        let state = self.services.entry(id).or_default();
        if state.rev_nat != Some(wanted) {
            maps.update_rev_nat(id, wanted).map_err(|e| {
                Error::map_write(format!("update rev_nat entry {id} ({frontend})"), e)
            })?;
            self.ops += 1;
            state.rev_nat = Some(wanted);
        }
        Ok(())
    }

    /// The backend's id, writing the backend if the maps do not hold it.
    fn ensure_backend(
        &mut self,
        maps: &mut impl ServiceMaps,
        backend: &DesiredBackend,
    ) -> Result<u32> {
        let id = match self.backend_ids.get(&backend.key) {
            Some(&id) => id,
            None => {
                let id = self.backend_alloc.allocate()?;
                self.backend_ids.insert(backend.key, id);
                self.backends.insert(
                    id,
                    BackendState {
                        key: Some(backend.key),
                        value: None,
                        refs: 0,
                        flag_refs: [0; 8],
                    },
                );
                // Deleted by the next sweep should nothing come to name it.
                self.backend_candidates.insert(id);
                id
            }
        };
        let state = self
            .backends
            .get_mut(&id)
            .expect("ids in backend_ids have a state");
        if state.value.is_none() {
            let value = backend.key.value(backend.flags);
            maps.update_backend(id, value).map_err(|e| {
                Error::map_write(format!("update backend {id} ({})", backend.key), e)
            })?;
            self.ops += 1;
            state.value = Some(value);
        }
        Ok(id)
    }

    fn write_master(
        &mut self,
        maps: &mut impl ServiceMaps,
        key: MasterKey,
        state: &mut FrontendState,
        value: ServiceValue,
    ) -> Result<()> {
        maps.update_service(key.entry(0), value)
            .map_err(|e| Error::map_write(format!("update master of {key}"), e))?;
        self.ops += 1;
        let old = state.master.replace(value);
        if old.map(|m| m.service_id) != Some(value.service_id) {
            self.services.entry(value.service_id).or_default().refs += 1;
            if let Some(old) = old {
                self.unref_service_id(old.service_id);
            }
        }
        Ok(())
    }

    fn write_slot(
        &mut self,
        maps: &mut impl ServiceMaps,
        key: MasterKey,
        state: &mut FrontendState,
        slot: usize,
        value: ServiceValue,
        flags: u8,
    ) -> Result<()> {
        maps.update_service(key.entry(slot_index(slot)), value)
            .map_err(|e| Error::map_write(format!("update slot {slot} of {key}"), e))?;
        self.ops += 1;
        if state.slots.len() < slot {
            state.slots.resize(slot, None);
        }
        let old = state.slots[slot - 1].replace(SlotState { value, flags });
        if let Some(backend) = self.backends.get_mut(&value.backend_id) {
            backend.refs += 1;
            backend.count_flags(flags, true);
            self.backend_candidates.insert(value.backend_id);
        }
        if let Some(old) = old {
            self.unref_backend(old);
        }
        Ok(())
    }

    fn delete_slot(
        &mut self,
        maps: &mut impl ServiceMaps,
        key: MasterKey,
        state: &mut FrontendState,
        slot: usize,
    ) -> Result<()> {
        maps.delete_service(key.entry(slot_index(slot)))
            .map_err(|e| Error::map_write(format!("delete slot {slot} of {key}"), e))?;
        self.ops += 1;
        if let Some(old) = state.slots[slot - 1].take() {
            self.unref_backend(old);
        }
        Ok(())
    }

    fn unref_backend(&mut self, slot: SlotState) {
        if let Some(backend) = self.backends.get_mut(&slot.value.backend_id) {
            backend.refs = backend.refs.saturating_sub(1);
            backend.count_flags(slot.flags, false);
            self.backend_candidates.insert(slot.value.backend_id);
        }
    }

    fn recount_flags(&mut self, id: u32, old: u8, new: u8) {
        if let Some(backend) = self.backends.get_mut(&id) {
            backend.count_flags(old, false);
            backend.count_flags(new, true);
            self.backend_candidates.insert(id);
        }
    }

    fn unref_service_id(&mut self, id: u32) {
        if let Some(state) = self.services.get_mut(&id) {
            state.refs = state.refs.saturating_sub(1);
            if state.refs == 0 {
                self.service_candidates.insert(id);
            }
        }
    }
}
