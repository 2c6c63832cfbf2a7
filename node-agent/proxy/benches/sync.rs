//! Sync engine costs against in-memory maps (`cargo bench -p coxswain-proxy`):
//! programming N Services of 10 endpoints from scratch, and one endpoint
//! change among 10,000 Services (p50/p99 over 1,000 changes), with random
//! backend choice and with Maglev (each change also recomputes and writes
//! the Service's 16,381-entry table).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use coxswain_dataplane::MemoryServiceMaps;
use coxswain_proxy::{LbAlgorithm, ProxyState};
use support::{SliceBuilder, SvcBuilder, cluster, node, pod_ip};

const ENDPOINTS: u32 = 10;

/// Loads every object (deferred), then one full resync.
fn program(
    objects: &[(SvcBuilder, SliceBuilder)],
    algorithm: LbAlgorithm,
) -> (ProxyState, MemoryServiceMaps, Duration, usize) {
    let mut maps = MemoryServiceMaps::default();
    let mut proxy = ProxyState::new(node()).with_lb_algorithm(algorithm);
    let started = Instant::now();
    for (service, slice) in objects {
        proxy
            .upsert_service(&mut maps, service)
            .expect("load Service");
        proxy
            .upsert_endpoint_slice(&mut maps, slice)
            .expect("load slice");
    }
    let report = proxy.full_resync(&mut maps).expect("full resync");
    (proxy, maps, started.elapsed(), report.ops)
}

/// Syncs once, then applies every object as a change.
fn program_one_by_one(objects: &[(SvcBuilder, SliceBuilder)]) -> Duration {
    let mut maps = MemoryServiceMaps::default();
    let mut proxy = ProxyState::new(node());
    proxy.full_resync(&mut maps).expect("full resync");
    let started = Instant::now();
    for (service, slice) in objects {
        proxy
            .upsert_endpoint_slice(&mut maps, slice)
            .expect("slice");
        proxy.upsert_service(&mut maps, service).expect("Service");
    }
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn main() {
    for n in [1_000, 10_000] {
        let objects = cluster(n, ENDPOINTS);
        let (_, maps, elapsed, ops) = program(&objects, LbAlgorithm::Random);
        println!(
            "program {n:>6} Services x {ENDPOINTS} endpoints from scratch (load + full_resync): {elapsed:>10.2?}  ({ops} ops, {} service entries)",
            maps.state.services.len()
        );
        let elapsed = program_one_by_one(&objects);
        println!(
            "program {n:>6} Services x {ENDPOINTS} endpoints one change at a time:          {elapsed:>10.2?}"
        );
    }

    for algorithm in [LbAlgorithm::Random, LbAlgorithm::Maglev] {
        one_endpoint_changes(algorithm);
    }
}

/// One endpoint change at a time among 10,000 Services.
fn one_endpoint_changes(algorithm: LbAlgorithm) {
    const SERVICES: u32 = 10_000;
    const CHANGES: u32 = 1_000;
    let objects = cluster(SERVICES, ENDPOINTS);
    let (mut proxy, mut maps, elapsed, _) = program(&objects, algorithm);
    if algorithm == LbAlgorithm::Maglev {
        println!("program {SERVICES:>6} Services x {ENDPOINTS} endpoints with Maglev tables:            {elapsed:>10.2?}");
    }
    let mut samples = Vec::with_capacity(CHANGES as usize);
    let mut ops = 0;
    for change in 0..CHANGES {
        // A different Service each time; its last endpoint is replaced by a
        // new pod (backend written, slot replaced, old backend deleted).
        let i = (change * 7_919) % SERVICES;
        let mut slice = objects[i as usize].1.clone();
        let endpoints = slice.0.endpoints.as_mut().expect("endpoints");
        endpoints.last_mut().expect("an endpoint").addresses =
            vec![pod_ip(SERVICES * ENDPOINTS + change).to_string()];
        maps.ops.clear();
        let started = Instant::now();
        let report = proxy
            .upsert_endpoint_slice(&mut maps, &slice)
            .expect("change");
        samples.push(started.elapsed());
        ops += report.ops;
    }
    samples.sort_unstable();
    println!(
        "one endpoint change at {SERVICES} Services, {algorithm:>6} ({CHANGES} changes, {:.1} ops each): p50 {:.2?}  p99 {:.2?}  max {:.2?}",
        ops as f64 / f64::from(CHANGES),
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        samples[samples.len() - 1],
    );
}
