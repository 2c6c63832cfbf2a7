//! Per-interface packet counters, summed over CPUs.

use std::collections::BTreeMap;

use coxswain_ebpf_common::{Counters, Hook};

/// Counters per (ifindex, hook), summed over every CPU.
pub type IfaceCounters = BTreeMap<(u32, Hook), Counters>;

/// Sums the per-CPU slots of one map value.
pub fn sum_per_cpu<'a>(values: impl IntoIterator<Item = &'a Counters>) -> Counters {
    values.into_iter().fold(Counters::default(), |mut acc, c| {
        acc.add(c);
        acc
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_cpu() {
        let cpus = [
            Counters {
                packets: 1,
                bytes: 60,
            },
            Counters::default(),
            Counters {
                packets: 2,
                bytes: 1500,
            },
        ];
        assert_eq!(
            sum_per_cpu(&cpus),
            Counters {
                packets: 3,
                bytes: 1560
            }
        );
    }
}
