//! How the scheduler is tuned.

use std::time::Duration;

/// Settings of a [`crate::Scheduler`]; `Default` gives upstream's defaults.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Pods with this `spec.schedulerName` are ours (`default-scheduler`).
    pub scheduler_name: String,
    /// Share of the nodes to find feasible before scoring, in percent; `None` is upstream's
    /// adaptive value: `50 - nodes/125`, at least 5 %. Never fewer than
    /// `min_feasible_nodes_to_find` nodes.
    pub percentage_of_nodes_to_score: Option<u32>,
    /// Feasible nodes to find at least before scoring (upstream: 100).
    pub min_feasible_nodes_to_find: usize,
    /// Bindings in flight at most while the next pods are scheduled.
    pub max_binds_in_flight: usize,
    /// First retry delay of a pod that failed (1 s), doubling per attempt...
    pub initial_backoff: Duration,
    /// ... up to this (10 s).
    pub max_backoff: Duration,
    /// A pod unschedulable this long is retried even without a cluster event (5 min).
    pub max_unschedulable_duration: Duration,
    /// Events waiting to be written at most; more are dropped (and counted), so a slow API
    /// server never slows scheduling down (client-go's broadcaster does the same).
    pub event_buffer: usize,
}

impl Default for SchedulerConfig {
    fn default() -> SchedulerConfig {
        SchedulerConfig {
            scheduler_name: "default-scheduler".into(),
            percentage_of_nodes_to_score: None,
            min_feasible_nodes_to_find: 100,
            max_binds_in_flight: 64,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            max_unschedulable_duration: Duration::from_secs(300),
            event_buffer: 4096,
        }
    }
}

impl SchedulerConfig {
    /// How many feasible nodes to look for among `nodes` before scoring.
    pub fn feasible_nodes_to_find(&self, nodes: usize) -> usize {
        let min = self.min_feasible_nodes_to_find.max(1);
        if nodes < min {
            return nodes;
        }
        let pct = match self.percentage_of_nodes_to_score {
            Some(p) if p > 0 => p as usize,
            _ => 50usize.saturating_sub(nodes / 125).max(5),
        };
        if pct >= 100 {
            return nodes;
        }
        (nodes * pct / 100).max(min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feasible_nodes_follow_upstreams_adaptive_percentage() {
        let c = SchedulerConfig::default();
        let table = [(0, 0), (50, 50), (100, 100), (500, 230), (1000, 420), (5000, 500), (50_000, 2500)];
        for (nodes, want) in table {
            assert_eq!(c.feasible_nodes_to_find(nodes), want, "{nodes} nodes");
        }
        let all = SchedulerConfig {
            percentage_of_nodes_to_score: Some(100),
            ..SchedulerConfig::default()
        };
        assert_eq!(all.feasible_nodes_to_find(5000), 5000);
    }
}
