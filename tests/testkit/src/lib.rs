//! Test harnesses shared by Coxswain integration tests: etcd clusters and child processes.

mod child;
mod etcd;

pub use child::TestChild;
pub use etcd::{EtcdCluster, EtcdOptions};
