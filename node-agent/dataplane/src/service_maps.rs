//! The service maps as a trait, so the proxy's sync logic runs unchanged
//! against the kernel ([`crate::KernelServiceMaps`]) and against memory in
//! unit tests ([`MemoryServiceMaps`]).

use std::collections::BTreeMap;

use coxswain_ebpf_common::{
    BackendV4, MaglevKeyV4, MaglevTable, RevNatV4, ServiceKeyV4, ServiceValue,
};

/// Errors from reading or writing service maps.
#[derive(Debug, thiserror::Error)]
pub enum MapWriteError {
    /// The kernel refused a map operation.
    #[error("failed to {op} {map} entry {key}: {source}")]
    Kernel {
        /// "update", "delete" or "read".
        op: &'static str,
        /// Map name.
        map: &'static str,
        /// The key, for the message.
        key: String,
        /// The aya error (boxed: it is large, and these results are on the
        /// sync path).
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// A map the object should contain is missing.
    #[error("eBPF object has no map named {0}; rebuild it with `cargo xtask build-ebpf`")]
    MissingMap(&'static str),
}

/// Everything the service maps hold; what a resync starts from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceMapsDump {
    /// Service master and slot entries.
    pub services: BTreeMap<ServiceKeyV4, ServiceValue>,
    /// Backends by id.
    pub backends: BTreeMap<u32, BackendV4>,
    /// Reverse-NAT entries by service id.
    pub rev_nat: BTreeMap<u32, RevNatV4>,
    /// Maglev tables by master entry.
    pub maglev: BTreeMap<MaglevKeyV4, Box<MaglevTable>>,
}

/// Writes to the maps that describe Services. Each call is one map
/// operation; the kernel sees every intermediate state, so callers order
/// their calls such that each state is consistent (see the proxy crate).
pub trait ServiceMaps {
    /// Inserts or replaces a service entry (master or slot).
    fn update_service(
        &mut self,
        key: ServiceKeyV4,
        value: ServiceValue,
    ) -> Result<(), MapWriteError>;
    /// Deletes a service entry; absent is not an error.
    fn delete_service(&mut self, key: ServiceKeyV4) -> Result<(), MapWriteError>;
    /// Inserts or replaces a backend.
    fn update_backend(&mut self, id: u32, backend: BackendV4) -> Result<(), MapWriteError>;
    /// Deletes a backend; absent is not an error.
    fn delete_backend(&mut self, id: u32) -> Result<(), MapWriteError>;
    /// Inserts or replaces a reverse-NAT entry.
    fn update_rev_nat(&mut self, id: u32, rev_nat: RevNatV4) -> Result<(), MapWriteError>;
    /// Deletes a reverse-NAT entry; absent is not an error.
    fn delete_rev_nat(&mut self, id: u32) -> Result<(), MapWriteError>;
    /// Inserts or replaces a Maglev table (the kernel swaps the whole value
    /// at once: a lookup sees the old table or the new one).
    fn update_maglev(&mut self, key: MaglevKeyV4, table: &MaglevTable)
    -> Result<(), MapWriteError>;
    /// Deletes a Maglev table; absent is not an error.
    fn delete_maglev(&mut self, key: MaglevKeyV4) -> Result<(), MapWriteError>;
    /// Reads every entry (at start, to adopt what a previous agent left).
    fn dump(&self) -> Result<ServiceMapsDump, MapWriteError>;
}

/// One operation, as recorded by [`MemoryServiceMaps`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOp {
    /// `update_service`.
    UpdateService(ServiceKeyV4, ServiceValue),
    /// `delete_service`.
    DeleteService(ServiceKeyV4),
    /// `update_backend`.
    UpdateBackend(u32, BackendV4),
    /// `delete_backend`.
    DeleteBackend(u32),
    /// `update_rev_nat`.
    UpdateRevNat(u32, RevNatV4),
    /// `delete_rev_nat`.
    DeleteRevNat(u32),
    /// `update_maglev` (the table itself is in the state).
    UpdateMaglev(MaglevKeyV4),
    /// `delete_maglev`.
    DeleteMaglev(MaglevKeyV4),
}

/// In-memory service maps that record every operation, for tests.
#[derive(Clone, Debug, Default)]
pub struct MemoryServiceMaps {
    /// Current contents.
    pub state: ServiceMapsDump,
    /// Every operation applied, in order.
    pub ops: Vec<MapOp>,
    /// Called after each operation with the new state (e.g. to check that
    /// every intermediate state is consistent).
    #[allow(clippy::type_complexity, reason = "a plain observer callback")]
    pub observer: Option<fn(&ServiceMapsDump, &MapOp)>,
}

impl MemoryServiceMaps {
    fn record(&mut self, op: MapOp) {
        self.ops.push(op);
        if let Some(observer) = self.observer {
            observer(&self.state, &op);
        }
    }
}

impl ServiceMaps for MemoryServiceMaps {
    fn update_service(
        &mut self,
        key: ServiceKeyV4,
        value: ServiceValue,
    ) -> Result<(), MapWriteError> {
        self.state.services.insert(key, value);
        self.record(MapOp::UpdateService(key, value));
        Ok(())
    }
    fn delete_service(&mut self, key: ServiceKeyV4) -> Result<(), MapWriteError> {
        self.state.services.remove(&key);
        self.record(MapOp::DeleteService(key));
        Ok(())
    }
    fn update_backend(&mut self, id: u32, backend: BackendV4) -> Result<(), MapWriteError> {
        self.state.backends.insert(id, backend);
        self.record(MapOp::UpdateBackend(id, backend));
        Ok(())
    }
    fn delete_backend(&mut self, id: u32) -> Result<(), MapWriteError> {
        self.state.backends.remove(&id);
        self.record(MapOp::DeleteBackend(id));
        Ok(())
    }
    fn update_rev_nat(&mut self, id: u32, rev_nat: RevNatV4) -> Result<(), MapWriteError> {
        self.state.rev_nat.insert(id, rev_nat);
        self.record(MapOp::UpdateRevNat(id, rev_nat));
        Ok(())
    }
    fn delete_rev_nat(&mut self, id: u32) -> Result<(), MapWriteError> {
        self.state.rev_nat.remove(&id);
        self.record(MapOp::DeleteRevNat(id));
        Ok(())
    }
    fn update_maglev(
        &mut self,
        key: MaglevKeyV4,
        table: &MaglevTable,
    ) -> Result<(), MapWriteError> {
        self.state.maglev.insert(key, Box::new(*table));
        self.record(MapOp::UpdateMaglev(key));
        Ok(())
    }
    fn delete_maglev(&mut self, key: MaglevKeyV4) -> Result<(), MapWriteError> {
        self.state.maglev.remove(&key);
        self.record(MapOp::DeleteMaglev(key));
        Ok(())
    }
    fn dump(&self) -> Result<ServiceMapsDump, MapWriteError> {
        Ok(self.state.clone())
    }
}
