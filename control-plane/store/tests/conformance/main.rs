//! The store conformance suite, run against every backend: the embedded store, a
//! single-member etcd and (for the cases where replication matters) a 3-member etcd cluster.
//! Backend-specific tests follow: kill -9 durability of the embedded store, and etcd failover.

mod cases;
mod fixture;

use std::sync::Arc;

use coxswain_store::{EmbeddedConfig, EmbeddedStore, Error, EtcdStore, Store};
use coxswain_testkit::{EtcdCluster, TestChild};

use cases::{Acked, GUARD, b, changes, check_creates};

/// Instantiates cases for one backend: `suite!(fixture_expr => case, ...)`.
macro_rules! suite {
    ($fixture:expr => $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = $fixture.await;
                super::cases::$case(&fixture).await;
            }
        )+
    };
}

mod embedded {
    use super::fixture;

    suite!(fixture::embedded() =>
        crud_semantics,
        concurrent_cas_increments,
        watch_ordering_concurrent_writers,
        watch_replays_history,
        list_pagination_stable,
        reads_at_old_revision,
        compaction,
        progress_on_idle_watch,
        slow_watcher_catches_up,
        bad_input,
        compactor_keeps_a_window,
    );
}

mod etcd_single {
    use super::fixture;

    suite!(fixture::etcd(1) =>
        crud_semantics,
        concurrent_cas_increments,
        watch_ordering_concurrent_writers,
        watch_replays_history,
        list_pagination_stable,
        reads_at_old_revision,
        compaction,
        progress_on_idle_watch,
        slow_watcher_catches_up,
        bad_input,
        compactor_keeps_a_window,
    );
}

mod etcd_cluster {
    use super::fixture;

    // Replication changes nothing for input checks or the compactor's pacing; these are the
    // cases where a quorum and followers are involved.
    suite!(fixture::etcd(3) =>
        crud_semantics,
        concurrent_cas_increments,
        watch_ordering_concurrent_writers,
        list_pagination_stable,
        compaction,
        progress_on_idle_watch,
    );
}

/// Where the durability child writes; its presence selects the child role.
const CHILD_DB_ENV: &str = "COXSWAIN_STORE_DURABILITY_DB";

/// The child side of `embedded_survives_kill_9`: writes keys from several tasks and prints
/// `ack <key> <revision>` after each write returned. Does nothing in a normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_writer_child() {
    let Ok(path) = std::env::var(CHILD_DB_ENV) else {
        return;
    };
    let store = EmbeddedStore::open(EmbeddedConfig::new(path))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                // Bounded, but far more than the parent waits for before killing.
                for i in 0..100_000 {
                    let key = format!("/durable/{t}/{i:06}");
                    let kv = store
                        .create(&key, b(format!("value-{t}-{i}")))
                        .await
                        .unwrap();
                    println!("ack {key} {}", kv.mod_revision);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// Every write the embedded store acknowledged survives SIGKILL of its process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_survives_kill_9() {
    const ACKS_BEFORE_KILL: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let mut child = TestChild::spawn(
        "durability_writer_child",
        &[(CHILD_DB_ENV, path.to_str().unwrap())],
    )
    .unwrap();
    let mut acked = Acked::new();
    let parse = |line: &str, acked: &mut Acked| {
        if let Some(rest) = line.strip_prefix("ack ") {
            let (key, revision) = rest.split_once(' ').expect("ack line");
            acked.insert(key.to_owned(), revision.parse().expect("revision"));
        }
    };
    while acked.len() < ACKS_BEFORE_KILL {
        let line = child
            .next_line(GUARD)
            .await
            .unwrap()
            .expect("the child stopped before being killed");
        parse(&line, &mut acked);
    }
    // Kill mid-stream: the child is writing as fast as it can.
    child.kill().await.unwrap();

    // Acknowledgements already in the pipe count too.
    while let Some(line) = child.next_line(GUARD).await.unwrap() {
        parse(&line, &mut acked);
    }

    let store = EmbeddedStore::open(EmbeddedConfig::new(&path))
        .await
        .unwrap();
    let max_acked = acked.values().copied().max().unwrap();
    let current = store.current_revision().await.unwrap();
    assert!(
        current >= max_acked,
        "revision {current} < acknowledged {max_acked}"
    );
    for (key, revision) in &acked {
        let (kv, _) = store.get(key, None).await.unwrap();
        let kv = kv.unwrap_or_else(|| panic!("acknowledged {key} lost after kill -9"));
        assert_eq!(kv.mod_revision, *revision, "{key}");
    }
    // The store is fully usable: revisions continue, history replays.
    let next = store.create("/durable/after", b("x")).await.unwrap();
    assert_eq!(next.mod_revision, current + 1);
    let mut watch = store.watch("/durable/", 0).await.unwrap();
    let replayed = changes(&mut watch, usize::try_from(current).unwrap() - 1).await;
    assert_eq!(replayed.len() as i64, current - 1);
}

/// Keys live under the configured prefix in etcd, nowhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_keys_live_under_the_prefix() {
    let fixture = fixture::etcd(1).await;
    fixture.store.create("/pods/a", b("x")).await.unwrap();
    let urls = fixture.cluster.as_ref().unwrap().client_urls();
    let mut client = etcd_client::Client::connect(&urls, None).await.unwrap();
    let all = client
        .get(
            "",
            Some(
                etcd_client::GetOptions::new()
                    .with_all_keys()
                    .with_keys_only(),
            ),
        )
        .await
        .unwrap();
    let keys: Vec<&str> = all.kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
    assert_eq!(keys, vec!["/coxswain-test/pods/a"]);
}

/// Killing the etcd leader mid-watch: writes keep succeeding through the other members and
/// the watch delivers every acknowledged write exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_leader_killed_mid_watch() {
    const KEYS: usize = 80;
    const SEEN_BEFORE_KILL: usize = 20;
    let mut cluster = EtcdCluster::start(3).await.unwrap();
    // Point the store at the leader first, so both the writes and the watch lose their member.
    let leader = cluster.leader().await.unwrap();
    let mut endpoints = cluster.client_urls();
    endpoints.rotate_left(leader);
    let store: Arc<dyn Store> = Arc::new(
        EtcdStore::connect(fixture::etcd_config(endpoints))
            .await
            .unwrap(),
    );
    let start = store.current_revision().await.unwrap();
    let mut watch = store.watch("/failover/", start).await.unwrap();

    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut acked = Acked::new();
            let mut unknown_outcomes = 0;
            for i in 0..KEYS {
                let key = format!("/failover/{i:03}");
                let mut unknown = false;
                loop {
                    match store.create(&key, b("v")).await {
                        Ok(kv) => {
                            acked.insert(key.clone(), kv.mod_revision);
                            break;
                        }
                        // The member died with the write in flight: find out whether it
                        // was applied (reads are retried across members).
                        Err(Error::Unavailable { .. }) => {
                            // Counted once per key, however many attempts.
                            if !unknown {
                                unknown = true;
                                unknown_outcomes += 1;
                            }
                            // While the cluster elects a new leader (slow on a
                            // loaded machine) the read may be unavailable too:
                            // ask again; the outer guard bounds the wait.
                            let found = loop {
                                match store.get(&key, None).await {
                                    Ok((found, _)) => break found,
                                    Err(Error::Unavailable { .. }) => continue,
                                    Err(e) => panic!("read {key} failed: {e}"),
                                }
                            };
                            if let Some(kv) = found {
                                acked.insert(key.clone(), kv.mod_revision);
                                break;
                            }
                        }
                        Err(e) => panic!("write {key} failed: {e}"),
                    }
                }
                // Pace the writes so that the kill lands mid-stream.
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            (acked, unknown_outcomes)
        })
    };
    // The watch is live on the leader and has delivered events; the writer is still going.
    let mut events = changes(&mut watch, SEEN_BEFORE_KILL).await;
    assert!(!writer.is_finished(), "the writer finished before the kill");
    cluster.kill(leader).unwrap();
    let (acked, unknown_outcomes) = tokio::time::timeout(GUARD * 2, writer)
        .await
        .expect("writes stalled after the leader died")
        .unwrap();
    assert_eq!(acked.len(), KEYS);
    assert!(
        unknown_outcomes <= 3,
        "{unknown_outcomes} writes with unknown outcome"
    );
    let new_leader = cluster.leader().await.unwrap();
    assert_ne!(new_leader, leader);

    events.extend(changes(&mut watch, KEYS - SEEN_BEFORE_KILL).await);
    check_creates(&events, &acked);
    // Nothing more is pending: the next event is a later write.
    let last = store.create("/failover/zz", b("v")).await.unwrap();
    assert_eq!(
        cases::next_change(&mut watch).await.revision(),
        last.mod_revision
    );
}
