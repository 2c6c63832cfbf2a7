//! The scheduling queue, as upstream's: an active queue ordered by the queue-sort plugin, a
//! backoff queue (1 s doubling to 10 s by default) and an unschedulable set that cluster
//! events flush — only the pods rejected by a plugin that cares about the event — plus a
//! periodic flush of pods left unschedulable for too long.
//!
//! A pod rejected while a cluster event arrived during its attempt goes to backoff instead
//! of the unschedulable set, so an event is never missed between an attempt and its verdict.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::{PodInfo, PodKey};
use crate::framework::{ClusterEvents, QueueSortPlugin, QueuedPodInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Active,
    Backoff,
    Unschedulable(Instant),
    InFlight,
}

#[derive(Debug)]
struct Entry {
    info: QueuedPodInfo,
    place: Place,
    seq: u64,
}

struct ActiveItem {
    info: QueuedPodInfo,
    seq: u64,
    sort: Arc<dyn QueueSortPlugin>,
}

impl PartialEq for ActiveItem {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for ActiveItem {}
impl PartialOrd for ActiveItem {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ActiveItem {
    /// Greater pops first (BinaryHeap is a max-heap).
    fn cmp(&self, other: &Self) -> Ordering {
        if self.sort.less(&self.info, &other.info) {
            Ordering::Greater
        } else if self.sort.less(&other.info, &self.info) {
            Ordering::Less
        } else {
            other.seq.cmp(&self.seq)
        }
    }
}

/// Sizes of the queue's parts, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueSizes {
    pub active: usize,
    pub backoff: usize,
    pub unschedulable: usize,
    pub in_flight: usize,
}

/// Pods waiting to be scheduled.
pub(crate) struct SchedulingQueue {
    sort: Arc<dyn QueueSortPlugin>,
    plugin_events: HashMap<&'static str, ClusterEvents>,
    entries: HashMap<PodKey, Entry>,
    active: BinaryHeap<ActiveItem>,
    backoff: BinaryHeap<Reverse<(Instant, u64, PodKey)>>,
    seq: u64,
    scheduling_cycle: u64,
    move_request_cycle: u64,
    initial_backoff: Duration,
    max_backoff: Duration,
    max_unschedulable: Duration,
}

impl std::fmt::Debug for SchedulingQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulingQueue")
            .field("sizes", &self.sizes())
            .finish_non_exhaustive()
    }
}

impl SchedulingQueue {
    pub fn new(
        sort: Arc<dyn QueueSortPlugin>,
        plugin_events: HashMap<&'static str, ClusterEvents>,
        initial_backoff: Duration,
        max_backoff: Duration,
        max_unschedulable: Duration,
    ) -> SchedulingQueue {
        SchedulingQueue {
            sort,
            plugin_events,
            entries: HashMap::new(),
            active: BinaryHeap::new(),
            backoff: BinaryHeap::new(),
            seq: 0,
            scheduling_cycle: 0,
            move_request_cycle: 0,
            initial_backoff,
            max_backoff,
            max_unschedulable,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn push_active(&mut self, key: &PodKey) {
        let seq = self.next_seq();
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        e.place = Place::Active;
        e.seq = seq;
        self.active.push(ActiveItem {
            info: e.info.clone(),
            seq,
            sort: self.sort.clone(),
        });
    }

    fn backoff_expiry(&self, info: &QueuedPodInfo) -> Instant {
        let mut d = self.initial_backoff;
        for _ in 1..info.attempts {
            d = d.saturating_mul(2);
            if d >= self.max_backoff {
                break;
            }
        }
        info.timestamp + d.min(self.max_backoff)
    }

    fn push_backoff(&mut self, key: &PodKey) {
        let seq = self.next_seq();
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        e.place = Place::Backoff;
        e.seq = seq;
        let at = {
            let info = e.info.clone();
            self.backoff_expiry(&info)
        };
        self.backoff.push(Reverse((at, seq, key.clone())));
    }

    /// Moves a waiting pod to backoff, or straight to active if its backoff has expired.
    fn requeue(&mut self, key: &PodKey, now: Instant) {
        let Some(e) = self.entries.get(key) else {
            return;
        };
        if self.backoff_expiry(&e.info) <= now {
            self.push_active(key);
        } else {
            self.push_backoff(key);
        }
    }

    /// A pod to schedule appeared or changed. A change of its spec or labels (not only its
    /// status) retries an unschedulable pod.
    pub fn upsert(&mut self, pod: Arc<PodInfo>, now: Instant) {
        let key = pod.key.clone();
        match self.entries.get_mut(&key) {
            None => {
                self.entries.insert(
                    key.clone(),
                    Entry {
                        info: QueuedPodInfo {
                            pod,
                            timestamp: now,
                            initial_attempt: now,
                            attempts: 0,
                            unschedulable_plugins: Vec::new(),
                        },
                        place: Place::Active,
                        seq: 0,
                    },
                );
                self.push_active(&key);
            }
            Some(e) => {
                let spec_changed = e.info.pod.pod.spec != pod.pod.spec
                    || e.info.pod.pod.metadata.labels != pod.pod.metadata.labels;
                e.info.pod = pod;
                match e.place {
                    Place::Active => self.push_active(&key),
                    Place::Unschedulable(_) if spec_changed => self.requeue(&key, now),
                    Place::Backoff | Place::Unschedulable(_) | Place::InFlight => {}
                }
            }
        }
    }

    /// The pod is gone, bound, or no longer ours.
    pub fn remove(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Every pod waiting or being scheduled.
    pub fn keys(&self) -> Vec<PodKey> {
        self.entries.keys().cloned().collect()
    }

    /// Moves expired backoffs to active.
    fn flush_backoff(&mut self, now: Instant) {
        while let Some(Reverse((at, seq, key))) = self.backoff.peek().cloned() {
            if at > now {
                break;
            }
            self.backoff.pop();
            if self
                .entries
                .get(&key)
                .is_some_and(|e| e.seq == seq && e.place == Place::Backoff)
            {
                self.push_active(&key);
            }
        }
    }

    /// The next pod to schedule and its scheduling cycle, or when to look again.
    pub fn pop(&mut self, now: Instant) -> Result<(QueuedPodInfo, u64), Option<Instant>> {
        self.flush_backoff(now);
        while let Some(item) = self.active.pop() {
            let key = item.info.pod.key.clone();
            let Some(e) = self.entries.get_mut(&key) else {
                continue;
            };
            if e.seq != item.seq || e.place != Place::Active {
                continue;
            }
            e.place = Place::InFlight;
            e.info.attempts += 1;
            self.scheduling_cycle += 1;
            return Ok((e.info.clone(), self.scheduling_cycle));
        }
        Err(self.backoff.peek().map(|Reverse((at, _, _))| *at))
    }

    /// The pod fits nowhere: wait for a cluster event that may change that (or, when one
    /// arrived during its attempt, back off).
    pub fn unschedulable(
        &mut self,
        key: &str,
        cycle: u64,
        plugins: Vec<&'static str>,
        now: Instant,
    ) {
        let moved = self.move_request_cycle >= cycle;
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        e.info.timestamp = now;
        e.info.unschedulable_plugins = plugins;
        let key = e.info.pod.key.clone();
        if moved {
            self.push_backoff(&key);
        } else {
            e.place = Place::Unschedulable(now);
        }
    }

    /// The attempt failed for another reason (API error, bind failure): back off.
    pub fn backoff(&mut self, key: &str, now: Instant) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        e.info.timestamp = now;
        let key = e.info.pod.key.clone();
        self.push_backoff(&key);
    }

    /// A cluster event: retries the unschedulable pods it may help.
    pub fn on_event(&mut self, event: ClusterEvents, now: Instant) {
        if event == ClusterEvents::NONE {
            return;
        }
        self.move_request_cycle = self.scheduling_cycle;
        let to_move: Vec<PodKey> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.place, Place::Unschedulable(_)))
            .filter(|(_, e)| {
                e.info.unschedulable_plugins.is_empty()
                    || e.info.unschedulable_plugins.iter().any(|p| {
                        self.plugin_events
                            .get(p)
                            .copied()
                            .unwrap_or(ClusterEvents::ALL)
                            .intersects(event)
                    })
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in to_move {
            self.requeue(&key, now);
        }
    }

    /// Retries pods left unschedulable longer than the limit (upstream: 5 minutes).
    pub fn flush_unschedulable_leftover(&mut self, now: Instant) {
        let to_move: Vec<PodKey> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                matches!(e.place, Place::Unschedulable(since)
                    if now.duration_since(since) >= self.max_unschedulable)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in to_move {
            self.requeue(&key, now);
        }
    }

    pub fn sizes(&self) -> QueueSizes {
        let mut s = QueueSizes::default();
        for e in self.entries.values() {
            match e.place {
                Place::Active => s.active += 1,
                Place::Backoff => s.backoff += 1,
                Place::Unschedulable(_) => s.unschedulable += 1,
                Place::InFlight => s.in_flight += 1,
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::tests::pod;
    use crate::plugins::PrioritySort;

    fn queue() -> SchedulingQueue {
        SchedulingQueue::new(
            Arc::new(PrioritySort),
            HashMap::from([("NodeResourcesFit", ClusterEvents::NODE_ADD)]),
            Duration::from_secs(1),
            Duration::from_secs(10),
            Duration::from_secs(300),
        )
    }

    fn info(name: &str, priority: i32) -> Arc<PodInfo> {
        let mut p = pod(name, "", "");
        p.spec.as_mut().unwrap().priority = Some(priority);
        Arc::new(PodInfo::new(p))
    }

    #[test]
    fn pops_by_priority_then_arrival() {
        let mut q = queue();
        let t = Instant::now();
        q.upsert(info("low", 0), t);
        q.upsert(info("high", 100), t + Duration::from_millis(1));
        q.upsert(info("low2", 0), t + Duration::from_millis(2));
        let order: Vec<String> = std::iter::from_fn(|| q.pop(t).ok())
            .map(|(i, _)| i.pod.name.clone())
            .collect();
        assert_eq!(order, vec!["high", "low", "low2"]);
    }

    #[test]
    fn unschedulable_pods_wait_for_a_relevant_event_then_back_off() {
        let mut q = queue();
        let t = Instant::now();
        q.upsert(info("p", 0), t);
        let (_, cycle) = q.pop(t).unwrap();
        q.unschedulable("default/p", cycle, vec!["NodeResourcesFit"], t);
        assert_eq!(q.sizes().unschedulable, 1);
        // An event the rejecting plugin does not care about leaves it alone.
        q.on_event(ClusterEvents::ASSIGNED_POD_ADD, t);
        assert_eq!(q.sizes().unschedulable, 1);
        q.on_event(ClusterEvents::NODE_ADD, t + Duration::from_millis(100));
        assert_eq!(q.sizes().backoff, 1, "backoff of 1 s has not expired");
        assert_eq!(q.pop(t + Duration::from_millis(500)).err(), Some(Some(t + Duration::from_secs(1))));
        let (again, cycle) = q.pop(t + Duration::from_secs(1)).unwrap();
        assert_eq!(again.attempts, 2);
        // Second failure: 2 s backoff; an event during the attempt sends it to backoff.
        q.on_event(ClusterEvents::NODE_ADD, t + Duration::from_secs(1));
        q.unschedulable("default/p", cycle, vec!["NodeResourcesFit"], t + Duration::from_secs(1));
        assert_eq!(q.sizes().backoff, 1);
        assert!(q.pop(t + Duration::from_millis(2900)).is_err());
        assert!(q.pop(t + Duration::from_secs(3)).is_ok());
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let q = queue();
        let t = Instant::now();
        let mut i = QueuedPodInfo {
            pod: info("p", 0),
            timestamp: t,
            initial_attempt: t,
            attempts: 1,
            unschedulable_plugins: Vec::new(),
        };
        let mut got = Vec::new();
        for attempts in 1..=6 {
            i.attempts = attempts;
            got.push(q.backoff_expiry(&i).duration_since(t).as_secs());
        }
        assert_eq!(got, vec![1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn deleted_pods_are_not_popped() {
        let mut q = queue();
        let t = Instant::now();
        q.upsert(info("a", 0), t);
        q.upsert(info("b", 0), t);
        q.remove("default/a");
        let (i, _) = q.pop(t).unwrap();
        assert_eq!(i.pod.name, "b");
        assert!(q.pop(t).is_err());
    }
}
