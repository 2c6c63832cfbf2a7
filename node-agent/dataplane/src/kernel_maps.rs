//! [`ServiceMaps`] on the kernel's pinned hash maps.

use aya::maps::{HashMap, MapData};
use coxswain_ebpf_common::{
    BackendV4, MaglevKeyV4, MaglevTable, RevNatV4, ServiceKeyV4, ServiceValue, names,
};

use crate::{MapWriteError, ServiceMaps, ServiceMapsDump};

/// The service, backend, reverse-NAT and Maglev maps of a loaded object. Each call is
/// one bpf syscall, visible to the packet path as soon as it returns.
#[derive(Debug)]
pub struct KernelServiceMaps {
    services: HashMap<MapData, ServiceKeyV4, ServiceValue>,
    backends: HashMap<MapData, u32, BackendV4>,
    rev_nat: HashMap<MapData, u32, RevNatV4>,
    maglev: HashMap<MapData, MaglevKeyV4, MaglevTable>,
}

impl KernelServiceMaps {
    /// Takes the maps out of a loaded object.
    pub(crate) fn take(ebpf: &mut aya::Ebpf) -> Result<Self, MapWriteError> {
        fn take<K: aya::Pod, V: aya::Pod>(
            ebpf: &mut aya::Ebpf,
            name: &'static str,
        ) -> Result<HashMap<MapData, K, V>, MapWriteError> {
            let map = ebpf.take_map(name).ok_or(MapWriteError::MissingMap(name))?;
            HashMap::try_from(map).map_err(|source| MapWriteError::Kernel {
                op: "open",
                map: name,
                key: String::new(),
                source: Box::new(source),
            })
        }
        Ok(Self {
            services: take(ebpf, names::SERVICES_V4)?,
            backends: take(ebpf, names::BACKENDS_V4)?,
            rev_nat: take(ebpf, names::REV_NAT_V4)?,
            maglev: take(ebpf, names::MAGLEV_V4)?,
        })
    }
}

fn kernel(
    op: &'static str,
    map: &'static str,
    key: impl std::fmt::Debug,
) -> impl FnOnce(aya::maps::MapError) -> MapWriteError {
    move |source| MapWriteError::Kernel {
        op,
        map,
        key: format!("{key:?}"),
        source: Box::new(source),
    }
}

/// Deleting an absent key is not an error for the sync engine.
fn ignore_missing(result: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match result {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        other => other,
    }
}

impl ServiceMaps for KernelServiceMaps {
    fn update_service(
        &mut self,
        key: ServiceKeyV4,
        value: ServiceValue,
    ) -> Result<(), MapWriteError> {
        self.services
            .insert(key, value, 0)
            .map_err(kernel("update", names::SERVICES_V4, key))
    }

    fn delete_service(&mut self, key: ServiceKeyV4) -> Result<(), MapWriteError> {
        ignore_missing(self.services.remove(&key)).map_err(kernel(
            "delete",
            names::SERVICES_V4,
            key,
        ))
    }

    fn update_backend(&mut self, id: u32, backend: BackendV4) -> Result<(), MapWriteError> {
        self.backends
            .insert(id, backend, 0)
            .map_err(kernel("update", names::BACKENDS_V4, id))
    }

    fn delete_backend(&mut self, id: u32) -> Result<(), MapWriteError> {
        ignore_missing(self.backends.remove(&id)).map_err(kernel("delete", names::BACKENDS_V4, id))
    }

    fn update_rev_nat(&mut self, id: u32, rev_nat: RevNatV4) -> Result<(), MapWriteError> {
        self.rev_nat
            .insert(id, rev_nat, 0)
            .map_err(kernel("update", names::REV_NAT_V4, id))
    }

    fn delete_rev_nat(&mut self, id: u32) -> Result<(), MapWriteError> {
        ignore_missing(self.rev_nat.remove(&id)).map_err(kernel("delete", names::REV_NAT_V4, id))
    }

    fn update_maglev(
        &mut self,
        key: MaglevKeyV4,
        table: &MaglevTable,
    ) -> Result<(), MapWriteError> {
        self.maglev
            .insert(key, table, 0)
            .map_err(kernel("update", names::MAGLEV_V4, key))
    }

    fn delete_maglev(&mut self, key: MaglevKeyV4) -> Result<(), MapWriteError> {
        ignore_missing(self.maglev.remove(&key)).map_err(kernel("delete", names::MAGLEV_V4, key))
    }

    fn dump(&self) -> Result<ServiceMapsDump, MapWriteError> {
        let mut dump = ServiceMapsDump::default();
        for entry in self.services.iter() {
            let (k, v) = entry.map_err(kernel("read", names::SERVICES_V4, "*"))?;
            dump.services.insert(k, v);
        }
        for entry in self.backends.iter() {
            let (k, v) = entry.map_err(kernel("read", names::BACKENDS_V4, "*"))?;
            dump.backends.insert(k, v);
        }
        for entry in self.rev_nat.iter() {
            let (k, v) = entry.map_err(kernel("read", names::REV_NAT_V4, "*"))?;
            dump.rev_nat.insert(k, v);
        }
        for entry in self.maglev.iter() {
            let (k, v) = entry.map_err(kernel("read", names::MAGLEV_V4, "*"))?;
            dump.maglev.insert(k, Box::new(v));
        }
        Ok(dump)
    }
}
