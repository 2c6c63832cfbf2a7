//! The conformance cases: each takes a fresh store and checks one part of the contract.
//! Every backend must pass all of them unchanged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use coxswain_store::{
    Compactor, CompactorConfig, Error, Event, KeyValue, ListOptions, MAX_VALUE_SIZE, Revision,
    WatchStream,
};
use futures::StreamExt;

use super::fixture::Fixture;

/// Failure guard for anything awaited; never a synchronization device.
pub const GUARD: Duration = Duration::from_secs(20);

pub fn b(s: impl AsRef<[u8]>) -> Bytes {
    Bytes::copy_from_slice(s.as_ref())
}

/// The next item of a watch (progress notifications included).
pub async fn next_item(watch: &mut WatchStream) -> Event {
    tokio::time::timeout(GUARD, watch.next())
        .await
        .expect("watch produced nothing in time")
        .expect("watch ended")
        .expect("watch failed")
}

/// The next change of a watch, skipping progress notifications.
pub async fn next_change(watch: &mut WatchStream) -> Event {
    loop {
        let event = next_item(watch).await;
        if !matches!(event, Event::Progress { .. }) {
            return event;
        }
    }
}

/// `n` changes of a watch.
pub async fn changes(watch: &mut WatchStream, n: usize) -> Vec<Event> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(next_change(watch).await);
    }
    out
}

/// Applies events to a model of the store, checking each one's previous value and that
/// revisions strictly increase.
#[derive(Default)]
pub struct Model {
    pub keys: BTreeMap<String, KeyValue>,
    pub last: Revision,
}

impl Model {
    pub fn apply(&mut self, event: &Event) {
        let revision = event.revision();
        assert!(
            revision > self.last,
            "revision {revision} after {}: {event:?}",
            self.last
        );
        self.last = revision;
        match event {
            Event::Put { kv, prev } => {
                assert_eq!(prev.as_ref(), self.keys.get(&kv.key), "prev of {event:?}");
                match prev {
                    Some(prev) => assert_eq!(kv.create_revision, prev.create_revision),
                    None => assert_eq!(kv.create_revision, kv.mod_revision),
                }
                self.keys.insert(kv.key.clone(), kv.clone());
            }
            Event::Delete { key, prev, .. } => {
                assert_eq!(Some(prev), self.keys.get(key), "prev of {event:?}");
                self.keys.remove(key);
            }
            Event::Progress { .. } => panic!("progress is not a change"),
        }
    }
}

/// create / get / update / delete, CAS conflicts, and that failures change nothing.
pub async fn crud_semantics(f: &Fixture) {
    let s = &f.store;
    let r0 = s.current_revision().await.unwrap();
    assert!(r0 >= 1);
    assert_eq!(s.get("/crud/a", None).await.unwrap(), (None, r0));

    let a = s.create("/crud/a", b("1")).await.unwrap();
    assert_eq!((a.key.as_str(), &a.value[..]), ("/crud/a", &b"1"[..]));
    assert_eq!(a.create_revision, a.mod_revision);
    assert_eq!(a.mod_revision, r0 + 1);
    assert_eq!(s.current_revision().await.unwrap(), a.mod_revision);
    assert_eq!(
        s.get("/crud/a", None).await.unwrap(),
        (Some(a.clone()), a.mod_revision)
    );

    match s.create("/crud/a", b("again")).await {
        Err(Error::AlreadyExists { key }) => assert_eq!(key, "/crud/a"),
        other => panic!("create over an existing key: {other:?}"),
    }

    let a2 = s.update("/crud/a", b("2"), a.mod_revision).await.unwrap();
    assert_eq!(a2.create_revision, a.create_revision);
    assert_eq!(a2.mod_revision, a.mod_revision + 1);
    assert_eq!(a2.value, b("2"));

    match s.update("/crud/a", b("stale"), a.mod_revision).await {
        Err(Error::Conflict {
            key,
            expected,
            current,
        }) => assert_eq!(
            (key.as_str(), expected, current),
            ("/crud/a", a.mod_revision, a2.mod_revision)
        ),
        other => panic!("stale update: {other:?}"),
    }
    assert!(matches!(
        s.update("/crud/missing", b("x"), a.mod_revision).await,
        Err(Error::NotFound { key }) if key == "/crud/missing"
    ));
    match s.delete("/crud/a", Some(a.mod_revision)).await {
        Err(Error::Conflict { current, .. }) => assert_eq!(current, a2.mod_revision),
        other => panic!("stale delete: {other:?}"),
    }
    // None of the failures above moved the revision or changed the value.
    assert_eq!(s.current_revision().await.unwrap(), a2.mod_revision);
    assert_eq!(s.get("/crud/a", None).await.unwrap().0, Some(a2.clone()));

    let deleted = s.delete("/crud/a", Some(a2.mod_revision)).await.unwrap();
    assert_eq!(deleted.prev, a2);
    assert_eq!(deleted.revision, a2.mod_revision + 1);
    assert_eq!(
        s.get("/crud/a", None).await.unwrap(),
        (None, deleted.revision)
    );
    assert!(matches!(
        s.delete("/crud/a", None).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.delete("/crud/a", Some(deleted.revision)).await,
        Err(Error::NotFound { .. })
    ));

    // Re-creating starts a new life with a new create revision.
    let a3 = s.create("/crud/a", b("3")).await.unwrap();
    assert_eq!(a3.create_revision, deleted.revision + 1);
    // Unconditional delete.
    s.create("/crud/b", b("b")).await.unwrap();
    let gone = s.delete("/crud/b", None).await.unwrap();
    assert_eq!(gone.prev.value, b("b"));
    let c = s.create("/crud/c", b("c")).await.unwrap();
    // A key sharing the prefix string but not the directory stays out of lists and counts.
    s.create("/crudx/d", b("d")).await.unwrap();

    assert_eq!(s.count("/crud/").await.unwrap(), 2);
    let list = s.list("/crud/", ListOptions::default()).await.unwrap();
    assert_eq!(list.items, vec![a3, c]);
    assert!(!list.more());
    assert_eq!(list.revision, s.current_revision().await.unwrap());
    assert_eq!(s.count("/").await.unwrap(), 3);
}

/// N tasks doing M compare-and-swap increments on one key never lose an update.
pub async fn concurrent_cas_increments(f: &Fixture) {
    const TASKS: u64 = 8;
    const INCREMENTS: u64 = 25;
    let created = f.store.create("/cas/counter", b("0")).await.unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let store = f.store.clone();
            tokio::spawn(async move {
                let mut conflicts = 0u64;
                for _ in 0..INCREMENTS {
                    loop {
                        let (kv, _) = store.get("/cas/counter", None).await.unwrap();
                        let kv = kv.expect("counter exists");
                        let n: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                        match store
                            .update("/cas/counter", b((n + 1).to_string()), kv.mod_revision)
                            .await
                        {
                            Ok(_) => break,
                            Err(Error::Conflict { .. }) => conflicts += 1,
                            Err(e) => panic!("increment failed: {e}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    let mut conflicts = 0;
    for task in tasks {
        conflicts += tokio::time::timeout(GUARD * 3, task)
            .await
            .unwrap()
            .unwrap();
    }
    let (kv, revision) = f.store.get("/cas/counter", None).await.unwrap();
    let kv = kv.unwrap();
    assert_eq!(
        kv.value,
        b((TASKS * INCREMENTS).to_string()),
        "{conflicts} conflicts"
    );
    // Exactly one revision per successful increment: failed CASes write nothing.
    assert_eq!(revision - created.mod_revision, (TASKS * INCREMENTS) as i64);
    assert_eq!(kv.create_revision, created.create_revision);
}

/// What a writer did, to compare with the watch.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    Put(String, Bytes),
    Delete(String),
}

fn change_of(event: &Event) -> Change {
    match event {
        Event::Put { kv, .. } => Change::Put(kv.key.clone(), kv.value.clone()),
        Event::Delete { key, .. } => Change::Delete(key.clone()),
        Event::Progress { .. } => panic!("progress is not a change"),
    }
}

/// Under concurrent writers a prefix watch sees every write exactly once, in strictly
/// increasing revision order, with correct previous values, and nothing outside its prefix.
pub async fn watch_ordering_concurrent_writers(f: &Fixture) {
    const WRITERS: usize = 4;
    const KEYS: usize = 15;
    let start = f.store.current_revision().await.unwrap();
    let mut watch = f.store.watch("/wo/", start).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = f.store.clone();
        tasks.push(tokio::spawn(async move {
            let mut done: Vec<(Revision, Change)> = Vec::new();
            for i in 0..KEYS {
                let key = format!("/wo/{w}/{i:02}");
                let kv = store.create(&key, b("v0")).await.unwrap();
                done.push((kv.mod_revision, Change::Put(key.clone(), b("v0"))));
                let kv = store.update(&key, b("v1"), kv.mod_revision).await.unwrap();
                done.push((kv.mod_revision, Change::Put(key.clone(), b("v1"))));
                if i % 3 == 0 {
                    let deleted = store.delete(&key, Some(kv.mod_revision)).await.unwrap();
                    done.push((deleted.revision, Change::Delete(key.clone())));
                }
            }
            done
        }));
    }
    // Noise outside the watched prefix.
    let noise = {
        let store = f.store.clone();
        tokio::spawn(async move {
            for i in 0..KEYS {
                store
                    .create(&format!("/wox/{i}"), b("noise"))
                    .await
                    .unwrap();
            }
        })
    };
    let mut expected: BTreeMap<Revision, Change> = BTreeMap::new();
    for task in tasks {
        for (revision, change) in tokio::time::timeout(GUARD, task).await.unwrap().unwrap() {
            assert!(
                expected.insert(revision, change).is_none(),
                "revision {revision} reused"
            );
        }
    }
    tokio::time::timeout(GUARD, noise).await.unwrap().unwrap();
    // A marker written last: everything before it must have arrived exactly once.
    let marker = f.store.create("/wo/~marker", b("m")).await.unwrap();
    expected.insert(
        marker.mod_revision,
        Change::Put("/wo/~marker".into(), b("m")),
    );

    let mut model = Model::default();
    let mut seen: BTreeMap<Revision, Change> = BTreeMap::new();
    loop {
        let event = next_change(&mut watch).await;
        model.apply(&event);
        seen.insert(event.revision(), change_of(&event));
        if event.revision() == marker.mod_revision {
            break;
        }
    }
    assert_eq!(seen, expected);
}

/// A watch from an old revision replays history in order, for a prefix and for one key.
pub async fn watch_replays_history(f: &Fixture) {
    let s = &f.store;
    let start = s.current_revision().await.unwrap();
    let a1 = s.create("/h/a", b("1")).await.unwrap();
    let a2 = s.update("/h/a", b("2"), a1.mod_revision).await.unwrap();
    let b1 = s.create("/h/b", b("1")).await.unwrap();
    let deleted = s.delete("/h/a", None).await.unwrap();
    s.create("/other/x", b("x")).await.unwrap();
    let b2 = s.update("/h/b", b("2"), b1.mod_revision).await.unwrap();

    let expected = vec![
        Event::Put {
            kv: a1.clone(),
            prev: None,
        },
        Event::Put {
            kv: a2.clone(),
            prev: Some(a1.clone()),
        },
        Event::Put {
            kv: b1.clone(),
            prev: None,
        },
        Event::Delete {
            key: "/h/a".into(),
            prev: a2.clone(),
            revision: deleted.revision,
        },
        Event::Put {
            kv: b2.clone(),
            prev: Some(b1.clone()),
        },
    ];
    let mut watch = s.watch("/h/", start).await.unwrap();
    assert_eq!(changes(&mut watch, expected.len()).await, expected);

    // One key only.
    let mut watch = s.watch("/h/b", start).await.unwrap();
    assert_eq!(
        changes(&mut watch, 2).await,
        vec![expected[2].clone(), expected[4].clone()]
    );

    // From the middle: only what came after.
    let mut watch = s.watch("/h/", a2.mod_revision).await.unwrap();
    assert_eq!(changes(&mut watch, 3).await, expected[2..].to_vec());

    // From zero: all retained history, then live events.
    let mut watch = s.watch("/h/", 0).await.unwrap();
    assert_eq!(changes(&mut watch, expected.len()).await, expected);
    let b3 = s.update("/h/b", b("3"), b2.mod_revision).await.unwrap();
    assert_eq!(
        next_change(&mut watch).await,
        Event::Put {
            kv: b3,
            prev: Some(b2)
        }
    );
}

/// Paginated lists stay on the first page's revision while writes continue.
pub async fn list_pagination_stable(f: &Fixture) {
    let s = &f.store;
    for i in 0..30 {
        s.create(&format!("/page/k{i:02}"), b("v0")).await.unwrap();
    }
    let snapshot = s.list("/page/", ListOptions::default()).await.unwrap();
    assert_eq!(snapshot.items.len(), 30);

    let mut items = Vec::new();
    let mut sizes = Vec::new();
    let mut options = ListOptions::default().limit(7);
    let mut round = 0;
    loop {
        let page = s.list("/page/", options).await.unwrap();
        assert_eq!(
            page.revision, snapshot.revision,
            "every page reads the first page's revision"
        );
        sizes.push(page.items.len());
        items.extend(page.items);
        // Writes between pages: a new key, an update, a delete.
        s.create(&format!("/page/new{round}"), b("new"))
            .await
            .unwrap();
        let victim = format!("/page/k{:02}", 29 - round);
        let (kv, _) = s.get(&victim, None).await.unwrap();
        s.update(&victim, b("changed"), kv.unwrap().mod_revision)
            .await
            .unwrap();
        s.delete(&format!("/page/k{:02}", round * 2), None)
            .await
            .unwrap();
        round += 1;
        match page.continue_token {
            Some(token) => options = ListOptions::default().limit(7).continue_from(token),
            None => break,
        }
    }
    assert_eq!(sizes, vec![7, 7, 7, 7, 2]);
    assert_eq!(items, snapshot.items);
    // The same snapshot by explicit revision, and the latest differs.
    let again = s
        .list("/page/", ListOptions::default().at(snapshot.revision))
        .await
        .unwrap();
    assert_eq!(again.items, snapshot.items);
    let latest = s.list("/page/", ListOptions::default()).await.unwrap();
    assert_ne!(latest.items, snapshot.items);
    assert!(latest.revision > snapshot.revision);
    // A limit beyond the count gives one page.
    let all = s
        .list("/page/", ListOptions::default().limit(1000))
        .await
        .unwrap();
    assert!(!all.more());
    assert_eq!(all.items, latest.items);
    // A continue token is bound to its prefix.
    let page = s
        .list("/page/", ListOptions::default().limit(1))
        .await
        .unwrap();
    let token = page.continue_token.unwrap();
    assert!(matches!(
        s.list("/other/", ListOptions::default().continue_from(token))
            .await,
        Err(Error::InvalidContinue { .. })
    ));
}

/// get and list at old revisions see the store as it was.
pub async fn reads_at_old_revision(f: &Fixture) {
    let s = &f.store;
    let a1 = s.create("/old/a", b("1")).await.unwrap();
    let a2 = s.update("/old/a", b("2"), a1.mod_revision).await.unwrap();
    let b1 = s.create("/old/b", b("1")).await.unwrap();
    let deleted = s.delete("/old/a", None).await.unwrap();

    let at = |r| async move { s.get("/old/a", Some(r)).await.unwrap() };
    assert_eq!(at(a1.mod_revision - 1).await, (None, a1.mod_revision - 1));
    assert_eq!(
        at(a1.mod_revision).await,
        (Some(a1.clone()), a1.mod_revision)
    );
    assert_eq!(at(a2.mod_revision).await.0, Some(a2.clone()));
    assert_eq!(at(b1.mod_revision).await.0, Some(a2.clone()));
    assert_eq!(at(deleted.revision).await.0, None);

    let list_at = |r| async move {
        s.list("/old/", ListOptions::default().at(r))
            .await
            .unwrap()
            .items
    };
    assert_eq!(list_at(a2.mod_revision).await, vec![a2.clone()]);
    assert_eq!(list_at(b1.mod_revision).await, vec![a2.clone(), b1.clone()]);
    assert_eq!(list_at(deleted.revision).await, vec![b1.clone()]);
    // Pagination at an old revision.
    let first = s
        .list("/old/", ListOptions::default().at(b1.mod_revision).limit(1))
        .await
        .unwrap();
    assert_eq!(first.items, vec![a2.clone()]);
    let second = s
        .list(
            "/old/",
            ListOptions::default()
                .limit(1)
                .continue_from(first.continue_token.unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(second.items, vec![b1.clone()]);
    assert!(!second.more());

    let current = s.current_revision().await.unwrap();
    match s.get("/old/a", Some(current + 100)).await {
        Err(Error::FutureRevision {
            requested,
            current: c,
        }) => {
            assert_eq!((requested, c), (current + 100, current))
        }
        other => panic!("get in the future: {other:?}"),
    }
    assert!(matches!(
        s.list("/old/", ListOptions::default().at(current + 1))
            .await,
        Err(Error::FutureRevision { .. })
    ));
    assert!(matches!(
        s.watch("/old/", current + 1).await,
        Err(Error::FutureRevision { .. })
    ));
}

/// After compaction, reads and watches below the compacted revision fail with `Compacted`;
/// at and after it everything still works.
pub async fn compaction(f: &Fixture) {
    let s = &f.store;
    let a1 = s.create("/c/a", b("1")).await.unwrap();
    let a2 = s.update("/c/a", b("2"), a1.mod_revision).await.unwrap();
    let a3 = s.update("/c/a", b("3"), a2.mod_revision).await.unwrap();
    let b1 = s.create("/c/b", b("1")).await.unwrap();
    let b_deleted = s.delete("/c/b", None).await.unwrap();
    let compacted = a3.mod_revision;
    s.compact(compacted).await.unwrap();

    match s.get("/c/a", Some(a1.mod_revision)).await {
        Err(Error::Compacted {
            requested,
            compacted: c,
        }) => assert_eq!((requested, c), (a1.mod_revision, compacted)),
        other => panic!("get below the compacted revision: {other:?}"),
    }
    assert!(matches!(
        s.list("/c/", ListOptions::default().at(a2.mod_revision))
            .await,
        Err(Error::Compacted { .. })
    ));
    match s.watch("/c/", a1.mod_revision).await {
        Err(Error::Compacted {
            requested,
            compacted: c,
        }) => assert_eq!((requested, c), (a1.mod_revision, compacted)),
        other => panic!(
            "watch below the compacted revision: {:?}",
            other.map(|_| ())
        ),
    }
    // The compacted revision itself is still readable.
    assert_eq!(
        s.get("/c/a", Some(compacted)).await.unwrap().0,
        Some(a3.clone())
    );
    assert_eq!(
        s.list("/c/", ListOptions::default().at(compacted))
            .await
            .unwrap()
            .items,
        vec![a3.clone()]
    );
    // A watch from it replays what came after, with previous values.
    let mut watch = s.watch("/c/", compacted).await.unwrap();
    assert_eq!(
        changes(&mut watch, 2).await,
        vec![
            Event::Put {
                kv: b1.clone(),
                prev: None
            },
            Event::Delete {
                key: "/c/b".into(),
                prev: b1.clone(),
                revision: b_deleted.revision
            },
        ]
    );
    let a4 = s.update("/c/a", b("4"), a3.mod_revision).await.unwrap();
    assert_eq!(
        next_change(&mut watch).await,
        Event::Put {
            kv: a4.clone(),
            prev: Some(a3.clone())
        }
    );
    // Compacting again, or to an older revision, is a no-op; the future is refused.
    s.compact(compacted).await.unwrap();
    s.compact(a1.mod_revision).await.unwrap();
    let current = s.current_revision().await.unwrap();
    assert!(matches!(
        s.compact(current + 10).await,
        Err(Error::FutureRevision { .. })
    ));
    assert_eq!(s.get("/c/a", None).await.unwrap().0, Some(a4));
}

/// An idle watch gets progress notifications that carry the store's current revision,
/// including revisions of writes outside the watched prefix.
pub async fn progress_on_idle_watch(f: &Fixture) {
    let s = &f.store;
    let start = s.current_revision().await.unwrap();
    let mut watch = s.watch("/idle/", start).await.unwrap();
    match next_item(&mut watch).await {
        Event::Progress { revision } => assert!(revision >= start),
        other => panic!("expected progress on an idle watch, got {other:?}"),
    }
    let elsewhere = s.create("/busy/x", b("x")).await.unwrap();
    loop {
        match next_item(&mut watch).await {
            Event::Progress { revision } if revision >= elsewhere.mod_revision => break,
            Event::Progress { .. } => {}
            other => panic!("unexpected change on an idle prefix: {other:?}"),
        }
    }
}

/// A watcher that does not read while many writes happen still gets all of them, in order.
pub async fn slow_watcher_catches_up(f: &Fixture) {
    const WRITERS: usize = 8;
    const KEYS: usize = 150;
    let start = f.store.current_revision().await.unwrap();
    let mut watch = f.store.watch("/slow/", start).await.unwrap();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = f.store.clone();
            tokio::spawn(async move {
                for i in 0..KEYS {
                    store
                        .create(&format!("/slow/{w}/{i:03}"), b("v"))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        tokio::time::timeout(GUARD * 3, task)
            .await
            .unwrap()
            .unwrap();
    }
    let mut model = Model::default();
    for event in changes(&mut watch, WRITERS * KEYS).await {
        model.apply(&event);
    }
    assert_eq!(model.keys.len(), WRITERS * KEYS);
    assert_eq!(model.last, f.store.current_revision().await.unwrap());
}

/// Bad input gets a typed error and changes nothing.
pub async fn bad_input(f: &Fixture) {
    let s = &f.store;
    let kept = s.create("/bad/kept", b("v")).await.unwrap();
    let revision = s.current_revision().await.unwrap();
    let big = Bytes::from(vec![0u8; MAX_VALUE_SIZE + 1]);

    fn invalid_key<T: std::fmt::Debug>(r: Result<T, Error>) -> bool {
        matches!(r, Err(Error::InvalidKey { .. }))
    }
    fn invalid_revision<T: std::fmt::Debug>(r: Result<T, Error>) -> bool {
        matches!(r, Err(Error::InvalidRevision { .. }))
    }
    for key in ["", "no-slash", "/ends/with/", "/nul\0byte"] {
        assert!(invalid_key(s.create(key, b("v")).await), "create {key:?}");
        assert!(invalid_key(s.get(key, None).await), "get {key:?}");
        assert!(
            invalid_key(s.update(key, b("v"), kept.mod_revision).await),
            "update {key:?}"
        );
        assert!(invalid_key(s.delete(key, None).await), "delete {key:?}");
    }
    let long = format!("/{}", "k".repeat(coxswain_store::MAX_KEY_SIZE));
    assert!(invalid_key(s.create(&long, b("v")).await));
    for prefix in ["", "bad/", "/no-trailing-slash"] {
        assert!(
            invalid_key(s.list(prefix, ListOptions::default()).await),
            "list {prefix:?}"
        );
        assert!(invalid_key(s.count(prefix).await), "count {prefix:?}");
    }
    assert!(invalid_key(s.watch("relative/", 0).await.map(|_| ())));
    match s.create("/bad/big", big.clone()).await {
        Err(Error::ValueTooLarge { size, limit, .. }) => {
            assert_eq!((size, limit), (MAX_VALUE_SIZE + 1, MAX_VALUE_SIZE))
        }
        other => panic!("oversized create: {other:?}"),
    }
    assert!(matches!(
        s.update("/bad/kept", big, kept.mod_revision).await,
        Err(Error::ValueTooLarge { .. })
    ));
    assert!(invalid_revision(s.update("/bad/kept", b("v"), 0).await));
    assert!(invalid_revision(s.delete("/bad/kept", Some(-1)).await));
    assert!(invalid_revision(s.get("/bad/kept", Some(0)).await));
    assert!(invalid_revision(
        s.list("/bad/", ListOptions::default().at(-5)).await
    ));
    assert!(invalid_revision(s.watch("/bad/", -1).await.map(|_| ())));
    assert!(invalid_revision(s.compact(0).await));

    // The largest allowed value is accepted.
    let max = Bytes::from(vec![7u8; MAX_VALUE_SIZE]);
    let written = s.create("/bad/max", max.clone()).await.unwrap();
    assert_eq!(s.get("/bad/max", None).await.unwrap().0.unwrap().value, max);
    // Nothing else changed: one revision for the one valid write.
    assert_eq!(written.mod_revision, revision + 1);
    assert_eq!(s.current_revision().await.unwrap(), revision + 1);
    assert_eq!(s.count("/").await.unwrap(), 2);
    assert_eq!(s.get("/bad/kept", None).await.unwrap().0, Some(kept));
}

/// The background compactor keeps about one window of history.
pub async fn compactor_keeps_a_window(f: &Fixture) {
    let s = &f.store;
    let first = s.create("/w/a", b("1")).await.unwrap();
    let second = s.update("/w/a", b("2"), first.mod_revision).await.unwrap();
    let compactor = Compactor::spawn(
        s.clone(),
        CompactorConfig {
            window: Duration::from_millis(300),
            tick: Duration::from_millis(50),
        },
    );
    let mut compacted = compactor.compacted();
    // Once a window has passed, history up to `second` goes.
    let reached = tokio::time::timeout(GUARD, compacted.wait_for(|&r| r >= second.mod_revision))
        .await
        .expect("the compactor did not compact in time")
        .map(|r| *r)
        .unwrap();
    assert!(reached <= s.current_revision().await.unwrap());
    assert!(matches!(
        s.get("/w/a", Some(first.mod_revision)).await,
        Err(Error::Compacted { .. })
    ));
    assert_eq!(s.get("/w/a", None).await.unwrap().0, Some(second));
}

/// Shared by the durability and failover tests: keys and their acknowledged revisions.
pub type Acked = HashMap<String, Revision>;

/// Checks that a watch delivered exactly the acknowledged creates, in order, once each.
pub fn check_creates(events: &[Event], acked: &Acked) {
    let mut model = Model::default();
    let mut seen = BTreeSet::new();
    for event in events {
        model.apply(event);
        let Event::Put { kv, prev: None } = event else {
            panic!("expected only creates, got {event:?}");
        };
        assert!(seen.insert(kv.key.clone()), "{} delivered twice", kv.key);
        assert_eq!(acked.get(&kv.key), Some(&kv.mod_revision), "{}", kv.key);
    }
    assert_eq!(seen.len(), acked.len());
}
