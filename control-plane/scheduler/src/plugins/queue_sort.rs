//! `PrioritySort`: higher `spec.priority` first, then the pod queued earliest.

use crate::framework::{Plugin, QueueSortPlugin, QueuedPodInfo};

/// Orders the active queue by priority, then by time queued.
#[derive(Debug, Default, Clone, Copy)]
pub struct PrioritySort;

impl Plugin for PrioritySort {
    fn name(&self) -> &'static str {
        "PrioritySort"
    }
}

impl QueueSortPlugin for PrioritySort {
    fn less(&self, a: &QueuedPodInfo, b: &QueuedPodInfo) -> bool {
        let (pa, pb) = (a.pod.priority, b.pod.priority);
        pa > pb || (pa == pb && a.timestamp < b.timestamp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{PodInfo, tests::pod};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn queued(priority: i32, at: Instant) -> QueuedPodInfo {
        let mut p = pod("p", "", "");
        p.spec.as_mut().unwrap().priority = Some(priority);
        QueuedPodInfo {
            pod: Arc::new(PodInfo::new(p)),
            timestamp: at,
            initial_attempt: at,
            attempts: 0,
            unschedulable_plugins: Vec::new(),
        }
    }

    #[test]
    fn higher_priority_first_then_oldest() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let s = PrioritySort;
        assert!(s.less(&queued(10, t1), &queued(0, t0)));
        assert!(!s.less(&queued(0, t0), &queued(10, t1)));
        assert!(s.less(&queued(5, t0), &queued(5, t1)));
        assert!(!s.less(&queued(5, t1), &queued(5, t0)));
    }
}
