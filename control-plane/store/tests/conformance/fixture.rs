//! Fresh stores for the conformance cases: embedded in a temp dir, or etcd in a new cluster.

use std::sync::Arc;
use std::time::Duration;

use coxswain_store::{EmbeddedConfig, EtcdConfig, Store, StoreConfig};
use coxswain_testkit::EtcdCluster;
use tempfile::TempDir;

/// How long an idle watch waits for a progress notification (embedded; the etcd clusters of
/// the testkit use the same interval on the server side).
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// A store and whatever keeps it alive; dropping it tears everything down.
pub struct Fixture {
    pub store: Arc<dyn Store>,
    /// Fields drop in order: the store first, then its files or cluster.
    _dir: Option<TempDir>,
    pub cluster: Option<EtcdCluster>,
}

pub async fn embedded() -> Fixture {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let config =
        EmbeddedConfig::new(dir.path().join("store.redb")).progress_interval(PROGRESS_INTERVAL);
    let store = StoreConfig::Embedded(config)
        .open()
        .await
        .expect("open the embedded store");
    Fixture {
        store,
        _dir: Some(dir),
        cluster: None,
    }
}

pub fn etcd_config(endpoints: Vec<String>) -> EtcdConfig {
    EtcdConfig::new(endpoints)
        .prefix("/coxswain-test/")
        .request_timeout(Duration::from_secs(3))
        .retry_timeout(Duration::from_secs(20))
}

pub async fn etcd(members: usize) -> Fixture {
    let cluster = EtcdCluster::start(members).await.expect("start etcd");
    let store = StoreConfig::Etcd(etcd_config(cluster.client_urls()))
        .open()
        .await
        .expect("connect to etcd");
    Fixture {
        store,
        _dir: None,
        cluster: Some(cluster),
    }
}
