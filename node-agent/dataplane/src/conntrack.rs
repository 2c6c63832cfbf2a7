//! Conntrack garbage collection. The kernel programs only record when a flow's entries
//! last saw a packet and whether a FIN or RST closed it; this module decides, per flow,
//! when its entries have outlived their lifetime (`ct_lifetime`) and deletes them all
//! together, so a table of 262,144 entries does not fill up with dead connections and
//! LRU eviction only ever has to deal with a real overload.
//!
//! One flow owns up to four entries (forward, reply, and for external flows egress and
//! SNAT-out). They are grouped by what they share: the client's address and port, the
//! protocol and the backend. A flow is live while any of its entries saw a packet within
//! the lifetime; closing (a FIN or RST on any entry) shortens the lifetime.

use std::collections::HashMap;

use aya::maps::HashMap as BpfHashMap;
use coxswain_ebpf_common::{CtKeyV4, CtValue, ct_dir, ct_flags, ct_lifetime, names};

use crate::{Dataplane, Error, Result};

/// What one collection pass saw and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Entries read.
    pub entries: usize,
    /// Flows those entries belong to.
    pub flows: usize,
    /// Flows found expired.
    pub expired_flows: usize,
    /// Entries deleted.
    pub deleted: usize,
}

/// The identity of the flow an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowId {
    client_addr: u32,
    client_port: u16,
    proto: u8,
    backend_addr: u32,
    backend_port: u16,
}

fn flow_id(key: &CtKeyV4, value: &CtValue) -> FlowId {
    let client_port = match key.dir {
        ct_dir::FORWARD | ct_dir::SNAT_OUT => key.sport,
        _ => key.dport,
    };
    FlowId {
        client_addr: value.client_addr,
        client_port,
        proto: key.proto,
        backend_addr: value.backend_addr,
        backend_port: value.backend_port,
    }
}

#[derive(Debug, Default)]
struct FlowState {
    last_seen_ns: u64,
    closing: bool,
    keys: Vec<CtKeyV4>,
}

/// The keys of every flow whose lifetime has passed at `now_ns` (CLOCK_MONOTONIC, the
/// clock of `bpf_ktime_get_ns`), and how many flows there were.
pub fn expired(entries: &[(CtKeyV4, CtValue)], now_ns: u64) -> (Vec<CtKeyV4>, usize, usize) {
    let mut flows: HashMap<FlowId, FlowState> = HashMap::with_capacity(entries.len() / 2 + 1);
    for (key, value) in entries {
        let state = flows.entry(flow_id(key, value)).or_default();
        state.last_seen_ns = state.last_seen_ns.max(value.last_seen_ns);
        state.closing |= value.flags & ct_flags::CLOSING != 0;
        state.keys.push(*key);
    }
    let total = flows.len();
    let mut expired_flows = 0;
    let mut keys = Vec::new();
    for (id, state) in flows {
        let lifetime_ns = ct_lifetime::seconds(id.proto, state.closing) * 1_000_000_000;
        // A timestamp from the future (a packet after `now_ns` was read) is live.
        if now_ns.saturating_sub(state.last_seen_ns) > lifetime_ns {
            expired_flows += 1;
            keys.extend(state.keys);
        }
    }
    (keys, total, expired_flows)
}

/// A backend that left a Service frontend, whose connectionless flows
/// (UDP, SCTP) must not keep going to it: such a flow has no end a
/// conntrack entry could see, so a client that keeps sending (a DNS
/// resolver, say) would follow its entry to the departed backend forever.
/// kube-proxy deletes the same entries (`conntrack -D`) for the same reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StaleBackend {
    /// The frontend's service id.
    pub service_id: u32,
    /// Backend address, network byte order (as in the maps).
    pub addr: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
}

/// The keys of every entry of a flow through one of `stale`.
pub fn stale_keys(entries: &[(CtKeyV4, CtValue)], stale: &[StaleBackend]) -> Vec<CtKeyV4> {
    let stale: std::collections::HashSet<StaleBackend> = stale.iter().copied().collect();
    entries
        .iter()
        .filter(|(key, value)| {
            stale.contains(&StaleBackend {
                service_id: value.service_id,
                addr: value.backend_addr,
                port: value.backend_port,
                proto: key.proto,
            })
        })
        .map(|(key, _)| *key)
        .collect()
}

/// Now on CLOCK_MONOTONIC in nanoseconds, the clock the kernel programs stamp entries with.
pub fn monotonic_now_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000
        + u64::try_from(ts.tv_nsec()).unwrap_or(0)
}

fn collect<T>(map: &mut BpfHashMap<T, CtKeyV4, CtValue>, now_ns: u64) -> Result<GcStats>
where
    T: std::borrow::BorrowMut<aya::maps::MapData>,
{
    // An entry evicted while we iterate is simply skipped.
    let entries: Vec<(CtKeyV4, CtValue)> = map.iter().flatten().collect();
    let (keys, flows, expired_flows) = expired(&entries, now_ns);
    let deleted = delete(map, &keys)?;
    Ok(GcStats {
        entries: entries.len(),
        flows,
        expired_flows,
        deleted,
    })
}

/// Deletes `keys`; returns how many were there.
fn delete<T>(map: &mut BpfHashMap<T, CtKeyV4, CtValue>, keys: &[CtKeyV4]) -> Result<usize>
where
    T: std::borrow::BorrowMut<aya::maps::MapData>,
{
    let name = names::CONNTRACK_V4;
    let mut deleted = 0;
    for key in keys {
        match map.remove(key) {
            Ok(()) => deleted += 1,
            // Gone already (evicted, or the kernel replaced the flow).
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(source) => return Err(Error::Map { name, source }),
        }
    }
    Ok(deleted)
}

fn flush<T>(map: &mut BpfHashMap<T, CtKeyV4, CtValue>, stale: &[StaleBackend]) -> Result<usize>
where
    T: std::borrow::BorrowMut<aya::maps::MapData>,
{
    if stale.is_empty() {
        return Ok(0);
    }
    let entries: Vec<(CtKeyV4, CtValue)> = map.iter().flatten().collect();
    delete(map, &stale_keys(&entries, stale))
}

impl Dataplane {
    /// Deletes the conntrack entries of flows through `stale` backends
    /// (see [`StaleBackend`]); returns how many entries went.
    pub fn flush_stale(&mut self, stale: &[StaleBackend]) -> Result<usize> {
        let name = names::CONNTRACK_V4;
        let map = self.ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
        let mut map: BpfHashMap<_, CtKeyV4, CtValue> =
            BpfHashMap::try_from(map).map_err(|source| Error::Map { name, source })?;
        flush(&mut map, stale)
    }

    /// Deletes the conntrack entries of flows that expired at `now_ns` (see
    /// [`monotonic_now_ns`]). A flow that sends a packet between the read and the delete
    /// is rebalanced on its next packet, as after an LRU eviction; only flows idle for their
    /// whole lifetime can be caught so.
    pub fn conntrack_gc(&mut self, now_ns: u64) -> Result<GcStats> {
        let name = names::CONNTRACK_V4;
        let map = self.ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
        let mut map: BpfHashMap<_, CtKeyV4, CtValue> =
            BpfHashMap::try_from(map).map_err(|source| Error::Map { name, source })?;
        collect(&mut map, now_ns)
    }
}

/// The conntrack collector on its own handle to the pinned table, so a pass (about a
/// second for a full table) never holds up the proxy's map writes.
pub struct ConntrackGc {
    map: BpfHashMap<aya::maps::MapData, CtKeyV4, CtValue>,
}

impl std::fmt::Debug for ConntrackGc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConntrackGc").finish_non_exhaustive()
    }
}

impl ConntrackGc {
    /// Opens the conntrack table pinned in `pin_dir` (by a loaded [`Dataplane`]).
    pub fn open(pin_dir: &std::path::Path) -> Result<ConntrackGc> {
        let name = names::CONNTRACK_V4;
        let data = aya::maps::MapData::from_pin(pin_dir.join(name))
            .map_err(|source| Error::Map { name, source })?;
        let map = BpfHashMap::try_from(aya::maps::Map::LruHashMap(data))
            .map_err(|source| Error::Map { name, source })?;
        Ok(ConntrackGc { map })
    }

    /// One pass at `now_ns` (see [`Dataplane::conntrack_gc`]).
    pub fn collect(&mut self, now_ns: u64) -> Result<GcStats> {
        collect(&mut self.map, now_ns)
    }

    /// See [`Dataplane::flush_stale`].
    pub fn flush_stale(&mut self, stale: &[StaleBackend]) -> Result<usize> {
        flush(&mut self.map, stale)
    }
}

#[cfg(test)]
mod tests {
    use coxswain_ebpf_common::proto;

    use super::*;

    const S: u64 = 1_000_000_000;

    /// The forward and reply entries of a flow client:port → backend:8080.
    fn flow(client_port: u16, proto: u8, last_seen_ns: u64, flags: u16) -> [(CtKeyV4, CtValue); 2] {
        let client = 0x0a00_0001;
        let backend = 0x0a00_0102;
        let value = CtValue {
            backend_id: 1,
            service_id: 1,
            last_seen_ns,
            backend_addr: backend,
            backend_port: 8080,
            flags,
            client_addr: client,
            snat_addr: 0,
        };
        let fwd = CtKeyV4 {
            saddr: client,
            daddr: 0x0a60_000a,
            sport: client_port,
            dport: 80,
            proto,
            dir: ct_dir::FORWARD,
            pad: [0; 2],
        };
        let reply = CtKeyV4 {
            saddr: backend,
            daddr: client,
            sport: 8080,
            dport: client_port,
            proto,
            dir: ct_dir::REPLY,
            pad: [0; 2],
        };
        [(fwd, value), (reply, value)]
    }

    #[test]
    fn open_tcp_flows_live_for_hours_closed_ones_for_seconds() {
        let now = 100_000 * S;
        let mut entries = Vec::new();
        entries.extend(flow(1000, proto::TCP, now - 3600 * S, 0)); // idle 1 h, open
        entries.extend(flow(1001, proto::TCP, now - 11 * S, ct_flags::CLOSING)); // closed
        entries.extend(flow(1002, proto::TCP, now - 7 * 3600 * S, 0)); // idle 7 h
        entries.extend(flow(1003, proto::UDP, now - 61 * S, 0)); // stale UDP
        entries.extend(flow(1004, proto::UDP, now - 5 * S, 0)); // live UDP
        let (keys, flows, expired_flows) = expired(&entries, now);
        assert_eq!(flows, 5);
        assert_eq!(expired_flows, 3);
        let mut ports: Vec<u16> = keys
            .iter()
            .map(|k| if k.dir == ct_dir::FORWARD { k.sport } else { k.dport })
            .collect();
        ports.sort_unstable();
        assert_eq!(ports, [1001, 1001, 1002, 1002, 1003, 1003]);
    }

    #[test]
    fn a_flow_lives_while_any_of_its_entries_is_fresh() {
        let now = 100_000 * S;
        let [(fwd, mut fwd_value), (reply, reply_value)] = flow(2000, proto::UDP, now - 5 * S, 0);
        // Only replies flow (a server pushing datagrams): the forward entry is old.
        fwd_value.last_seen_ns = now - 600 * S;
        let (keys, _, _) = expired(&[(fwd, fwd_value), (reply, reply_value)], now);
        assert!(keys.is_empty(), "a flow with a fresh reply entry is live");
        // A FIN seen on the reply side closes the whole flow.
        let mut closing = reply_value;
        closing.flags = ct_flags::CLOSING;
        closing.last_seen_ns = now - 20 * S;
        let [(tf, tfv), _] = flow(2001, proto::TCP, now - 20 * S, 0);
        let treply = CtKeyV4 { dport: 2001, proto: proto::TCP, ..reply };
        let (keys, _, expired_flows) = expired(&[(tf, tfv), (treply, closing)], now);
        assert_eq!((keys.len(), expired_flows), (2, 1));
    }

    #[test]
    fn stale_backends_take_every_entry_of_their_flows_and_only_those() {
        let mut entries = Vec::new();
        entries.extend(flow(4000, proto::UDP, 0, 0));
        entries.extend(flow(4001, proto::TCP, 0, 0));
        let stale = StaleBackend {
            service_id: 1,
            addr: 0x0a00_0102,
            port: 8080,
            proto: proto::UDP,
        };
        let keys = stale_keys(&entries, &[stale]);
        assert_eq!(keys.len(), 2);
        assert!(keys.iter().all(|k| k.proto == proto::UDP));
        // Another frontend's flows to the same backend stay.
        let other = StaleBackend { service_id: 2, ..stale };
        assert!(stale_keys(&entries, &[other]).is_empty());
    }

    #[test]
    fn timestamps_after_now_are_live() {
        let now = 10 * S;
        let entries = flow(3000, proto::TCP, now + S, ct_flags::CLOSING);
        assert!(expired(&entries, now).0.is_empty());
    }
}
