//! Watches over raw HTTP: initial state, resuming from a resourceVersion, selector
//! transitions, bookmarks, timeouts, 410 Gone past compaction, and two API servers on one
//! etcd seeing each other's writes.

mod common;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use common::{Backend, Http, StoreHandle, TestServer};
use serde_json::{Value, json};

const CMS: &str = "/api/v1/namespaces/default/configmaps";

fn cm(name: &str, labels: Value) -> Value {
    json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

fn name(ev: &Value) -> &str {
    ev["object"]["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
}

fn rv(v: &Value) -> String {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn merge(http: &Http, path: &str, patch: &str) -> Result<Value> {
    let r = http
        .request(
            "PATCH",
            path,
            &[("content-type", "application/merge-patch+json")],
            patch.to_owned(),
        )
        .await?;
    ensure!(r.status == 200, "{:?}", r.body);
    Ok(r.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_semantics() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let http = Http::new(&server);
    let first = http
        .post_json(CMS, &cm("a", json!({"team": "x"})))
        .await?
        .json();

    // No resourceVersion: the current objects as ADDED, then live changes.
    let mut all = http.watch(&format!("{CMS}?watch=true")).await?;
    ensure!(all.status == 200);
    let ev = all.next_change().await?.context("initial event")?;
    ensure!(ev["type"] == "ADDED" && name(&ev) == "a", "{ev}");

    // A label-selected watch sees objects enter and leave its selection.
    let mut selected = http
        .watch(&format!(
            "{CMS}?watch=true&labelSelector=team%3Dy&allowWatchBookmarks=true"
        ))
        .await?;
    let b = http
        .post_json(CMS, &cm("b", json!({"team": "y"})))
        .await?
        .json();
    let ev = selected.next_change().await?.context("b added")?;
    ensure!(ev["type"] == "ADDED" && name(&ev) == "b", "{ev}");
    merge(
        &http,
        &format!("{CMS}/a"),
        r#"{"metadata":{"labels":{"team":"y"}}}"#,
    )
    .await?;
    let ev = selected.next_change().await?.context("a enters")?;
    ensure!(
        ev["type"] == "ADDED" && name(&ev) == "a",
        "a entering the selection is ADDED: {ev}"
    );
    merge(
        &http,
        &format!("{CMS}/b"),
        r#"{"metadata":{"labels":{"team":"z"}}}"#,
    )
    .await?;
    let ev = selected.next_change().await?.context("b leaves")?;
    ensure!(
        ev["type"] == "DELETED" && name(&ev) == "b",
        "b leaving the selection is DELETED: {ev}"
    );
    let ev = selected.next().await?.context("a bookmark")?;
    ensure!(
        ev["type"] == "BOOKMARK" && ev["object"]["kind"] == "ConfigMap",
        "{ev}"
    );

    // The unfiltered watch saw every change in order.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let ev = all.next_change().await?.context("change")?;
        seen.push(format!(
            "{} {}",
            ev["type"].as_str().unwrap_or_default(),
            name(&ev)
        ));
    }
    ensure!(seen == ["ADDED b", "MODIFIED a", "MODIFIED b"], "{seen:?}");

    // Resuming from a resourceVersion replays only what came after it.
    let mut resumed = http
        .watch(&format!("{CMS}?watch=true&resourceVersion={}", rv(&first)))
        .await?;
    let ev = resumed.next_change().await?.context("replay")?;
    ensure!(
        ev["type"] == "ADDED" && name(&ev) == "b" && rv(&ev["object"]) == rv(&b),
        "{ev}"
    );
    let ev = resumed.next_change().await?.context("replay 2")?;
    ensure!(ev["type"] == "MODIFIED" && name(&ev) == "a", "{ev}");

    // Deletes carry the last state; a named watch sees only its object.
    let mut named = http
        .watch(&format!(
            "{CMS}?watch=true&fieldSelector=metadata.name%3Db&resourceVersion=0"
        ))
        .await?;
    let ev = named.next_change().await?.context("named initial")?;
    ensure!(ev["type"] == "ADDED" && name(&ev) == "b");
    http.request("DELETE", &format!("{CMS}/a"), &[], Bytes::new())
        .await?;
    http.request("DELETE", &format!("{CMS}/b"), &[], Bytes::new())
        .await?;
    let ev = named.next_change().await?.context("named delete")?;
    ensure!(
        ev["type"] == "DELETED"
            && name(&ev) == "b"
            && ev["object"]["metadata"]["labels"]["team"] == "z",
        "{ev}"
    );

    // sendInitialEvents ends its initial burst with an annotated bookmark.
    http.post_json(CMS, &cm("c", json!({}))).await?;
    let mut list_watch = http
        .watch(&format!("{CMS}?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan"))
        .await?;
    let ev = list_watch.next().await?.context("initial")?;
    ensure!(ev["type"] == "ADDED" && name(&ev) == "c", "{ev}");
    let ev = list_watch.next().await?.context("end bookmark")?;
    ensure!(
        ev["type"] == "BOOKMARK"
            && ev["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true",
        "{ev}"
    );

    // timeoutSeconds ends the stream.
    let mut short = http
        .watch(&format!(
            "{CMS}?watch=true&timeoutSeconds=1&resourceVersion={}",
            rv(&b)
        ))
        .await?;
    while short.next().await?.is_some() {}
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_before_compaction_is_gone() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let http = Http::new(&server);
    let first = http.post_json(CMS, &cm("old", json!({}))).await?.json();
    for i in 0..3 {
        merge(
            &http,
            &format!("{CMS}/old"),
            &format!(r#"{{"data":{{"n":"{i}"}}}}"#),
        )
        .await?;
    }
    let current = store.store.current_revision().await?;
    store.store.compact(current).await?;
    let mut watch = http
        .watch(&format!("{CMS}?watch=true&resourceVersion={}", rv(&first)))
        .await?;
    let status = if watch.status == 410 {
        None
    } else {
        let ev = watch.next().await?.context("an ERROR event")?;
        ensure!(ev["type"] == "ERROR", "{ev}");
        Some(ev["object"].clone())
    };
    if let Some(status) = status {
        ensure!(
            status["code"] == 410 && status["reason"] == "Expired",
            "{status}"
        );
    }
    // An Exact list at a compacted revision is gone too.
    let r = http
        .get(&format!(
            "{CMS}?resourceVersion={}&resourceVersionMatch=Exact",
            rv(&first)
        ))
        .await?;
    ensure!(
        r.status == 410 && r.json()["reason"] == "Expired",
        "{:?}",
        r.body
    );
    Ok(())
}

/// Two API servers on one etcd serve one cluster: a write through one reaches a watch on
/// the other, and allocations never collide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_etcd() -> Result<()> {
    let store = StoreHandle::open(Backend::Etcd).await?;
    let a = TestServer::start(store.store.clone()).await?;
    let b = TestServer::start(store.second_etcd_client().await?).await?;
    let (ha, hb) = (Http::new(&a), Http::new(&b));
    let mut watch = hb.watch(&format!("{CMS}?watch=true")).await?;
    let created = ha.post_json(CMS, &cm("shared", json!({}))).await?.json();
    let ev = watch
        .next_change()
        .await?
        .context("event on the other server")?;
    ensure!(
        ev["type"] == "ADDED" && name(&ev) == "shared" && rv(&ev["object"]) == rv(&created),
        "{ev}"
    );
    // A stale write through B after a write through A conflicts.
    merge(&ha, &format!("{CMS}/shared"), r#"{"data":{"k":"a"}}"#).await?;
    let r = hb.put_json(&format!("{CMS}/shared"), &created).await?;
    ensure!(r.status == 409, "{:?}", r.body);
    // Service addresses are unique across servers.
    let path = "/api/v1/namespaces/default/services";
    let mut tasks = Vec::new();
    for i in 0..10 {
        let http = if i % 2 == 0 { ha.clone() } else { hb.clone() };
        tasks.push(tokio::spawn(async move {
            http.post_json(path, &json!({"metadata": {"name": format!("s{i}")}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}})).await
        }));
    }
    let mut ips = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await??;
        ensure!(r.status == 201, "{:?}", r.body);
        ensure!(
            ips.insert(
                r.json()["spec"]["clusterIP"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            )
        );
    }
    Ok(())
}
