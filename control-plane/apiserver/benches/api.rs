//! API server benchmark through HTTP: create, get, update, list and watch throughput with
//! p50/p99 latencies, on the embedded store and on a single-member etcd side by side, plus
//! 1,000 concurrent watchers each receiving every event (delivery latency).
//!
//! `cargo bench -p coxswain-apiserver --bench api [-- --quick] [--embedded-only]`. Every phase is
//! bounded in operation count and in time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use coxswain_apiserver::{ApiServer, Security, ServerConfig, SubjectNames};
use coxswain_store::{EmbeddedConfig, EmbeddedStore, EtcdConfig, EtcdStore, Store};
use coxswain_testkit::EtcdCluster;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// No phase runs longer than this.
const PHASE_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
struct Plan {
    objects: usize,
    concurrency: usize,
    lists: usize,
    watch_events: usize,
    watchers: usize,
    fanout_events: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                objects: 300,
                concurrency: 8,
                lists: 20,
                watch_events: 300,
                watchers: 1000,
                fanout_events: 5,
            }
        } else {
            Plan {
                objects: 2000,
                concurrency: 16,
                lists: 100,
                watch_events: 2000,
                watchers: 1000,
                fanout_events: 20,
            }
        }
    }
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Clone)]
struct Api {
    client: HttpClient,
    base: String,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let resp = self.client.request(req.body(Full::new(body))?).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "{method} {path}: {status} {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        Ok(serde_json::from_slice(&bytes)?)
    }
}

struct Stats {
    name: &'static str,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Stats {
    fn print(&self, backend: &str) {
        let mut l = self.latencies.clone();
        l.sort();
        let pct = |p: f64| -> f64 {
            if l.is_empty() {
                return 0.0;
            }
            let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
            l[i].as_secs_f64() * 1000.0
        };
        println!(
            "{backend:<9} {:<22} {:>7} {:>10.0} {:>9.2} {:>9.2}",
            self.name,
            l.len(),
            l.len() as f64 / self.elapsed.as_secs_f64().max(1e-9),
            pct(0.50),
            pct(0.99),
        );
    }
}

/// Runs `count` operations over `concurrency` workers, timing each.
async fn run_ops<F, Fut>(
    name: &'static str,
    count: usize,
    concurrency: usize,
    op: F,
) -> Result<Stats>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (op, next) = (op.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count || start.elapsed() > PHASE_LIMIT {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let t = Instant::now();
                op(i).await?;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await??);
    }
    Ok(Stats {
        name,
        latencies,
        elapsed: start.elapsed(),
    })
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";

fn cm(i: usize) -> Value {
    json!({"metadata": {"name": format!("cm-{i}"), "labels": {"bench": "yes"}}, "data": {"value": "x".repeat(256)}})
}

/// Reads a watch response's events into `tx` as (event, time received).
async fn read_watch(
    api: &Api,
    path: &str,
    tx: mpsc::UnboundedSender<(Value, Instant)>,
) -> Result<()> {
    let req = hyper::Request::builder()
        .uri(format!("{}{path}", api.base))
        .body(Full::new(Bytes::new()))?;
    let resp = api.client.request(req).await?;
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            buf.extend_from_slice(&data);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let ev: Value = serde_json::from_slice(&line)?;
                if tx.send((ev, Instant::now())).is_err() {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// The TLS client configuration of the cluster admin: HTTPS with a client certificate is
/// what every real client pays, so the figures include it.
fn admin_tls(security: &Security) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let issued = security
        .ca()
        .issue(&coxswain_auth::pki::CertRequest::client("kubernetes-admin", &["system:masters"]))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(security.ca().cert_der().clone())?;
    let certs = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())?;
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?)
}

async fn bench_backend(backend: &str, store: Arc<dyn Store>, plan: Plan) -> Result<()> {
    let config = ServerConfig {
        bookmark_interval: Duration::from_secs(3600),
        ..ServerConfig::default()
    };
    let pki = tempfile::tempdir()?;
    let security = Security::load_or_create(pki.path(), SubjectNames::loopback(None))?;
    let tls = admin_tls(&security)?;
    let server = ApiServer::new(store, config, security).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let api = Api {
        client: Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(2048)
            .build(connector),
        base: format!("https://{addr}"),
    };
    let n = plan.objects;

    let a = api.clone();
    run_ops("create", n, plan.concurrency, move |i| {
        let a = a.clone();
        async move { a.call("POST", CMS, Some(&cm(i))).await.map(drop) }
    })
    .await?
    .print(backend);

    let a = api.clone();
    run_ops("get", n, plan.concurrency, move |i| {
        let a = a.clone();
        async move {
            a.call("GET", &format!("{CMS}/cm-{i}"), None)
                .await
                .map(drop)
        }
    })
    .await?
    .print(backend);

    let a = api.clone();
    run_ops("update (get+put)", n, plan.concurrency, move |i| {
        let a = a.clone();
        async move {
            let mut obj = a.call("GET", &format!("{CMS}/cm-{i}"), None).await?;
            obj["data"]["value"] = json!("y".repeat(256));
            a.call("PUT", &format!("{CMS}/cm-{i}"), Some(&obj))
                .await
                .map(drop)
        }
    })
    .await?
    .print(backend);

    let a = api.clone();
    let lists = run_ops("list (all, from store)", plan.lists, 2, move |_| {
        let a = a.clone();
        async move { a.call("GET", CMS, None).await.map(drop) }
    })
    .await?;
    lists.print(backend);
    let a = api.clone();
    run_ops("list (rv=0, cache)", plan.lists, 2, move |_| {
        let a = a.clone();
        async move {
            a.call("GET", &format!("{CMS}?resourceVersion=0"), None)
                .await
                .map(drop)
        }
    })
    .await?
    .print(backend);

    // Watch throughput: one watcher, updates from `concurrency` writers.
    let rv = api.call("GET", &format!("{CMS}?limit=1"), None).await?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_owned();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reader = {
        let api = api.clone();
        let path = format!("{CMS}?watch=true&resourceVersion={rv}");
        tokio::spawn(async move { read_watch(&api, &path, tx).await })
    };
    let events = plan.watch_events.min(n);
    let start = Instant::now();
    let a = api.clone();
    let writes = tokio::spawn(run_ops(
        "watch: writes",
        events,
        plan.concurrency,
        move |i| {
            let a = a.clone();
            async move {
                let patch = hyper::Request::builder()
                    .method("PATCH")
                    .uri(format!("{}{CMS}/cm-{i}", a.base))
                    .header("content-type", "application/merge-patch+json")
                    .body(Full::new(Bytes::from(format!(
                        "{{\"data\":{{\"n\":\"{i}\"}}}}"
                    ))))?;
                let resp = a.client.request(patch).await?;
                resp.into_body().collect().await?;
                Ok(())
            }
        },
    ));
    let mut received = 0;
    while received < events {
        match tokio::time::timeout(PHASE_LIMIT, rx.recv()).await {
            Ok(Some((ev, _))) if ev["type"] == "MODIFIED" => received += 1,
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    let elapsed = start.elapsed();
    writes.await??;
    reader.abort();
    println!(
        "{backend:<9} {:<22} {:>7} {:>10.0} {:>9} {:>9}",
        "watch: events received",
        received,
        received as f64 / elapsed.as_secs_f64(),
        "-",
        "-"
    );

    // Fan-out: many watchers, each must receive every event.
    let rv = api.call("GET", &format!("{CMS}?limit=1"), None).await?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_owned();
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Value, Instant)>();
    let mut readers = Vec::new();
    for w in 0..plan.watchers {
        let api = api.clone();
        let tx = tx.clone();
        let path =
            format!("{CMS}?watch=true&resourceVersion={rv}&fieldSelector=metadata.name%3Dcm-0");
        readers.push(tokio::spawn(async move {
            let (itx, mut irx) = mpsc::unbounded_channel();
            let forward = tokio::spawn(async move {
                while let Some((ev, at)) = irx.recv().await {
                    if tx.send((w, ev, at)).is_err() {
                        break;
                    }
                }
            });
            let r = read_watch(&api, &path, itx).await;
            forward.abort();
            r
        }));
    }
    drop(tx);
    // Wait until every watcher is registered (the server's watcher gauge) before writing.
    let deadline = Instant::now() + PHASE_LIMIT;
    loop {
        let metrics = api
            .client
            .request(
                hyper::Request::builder()
                    .uri(format!("{}/metrics", api.base))
                    .body(Full::new(Bytes::new()))?,
            )
            .await?;
        let text =
            String::from_utf8_lossy(&metrics.into_body().collect().await?.to_bytes()).into_owned();
        let open: f64 = text
            .lines()
            .find(|l| l.starts_with("apiserver_registered_watchers{") && l.contains("configmaps"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if open as usize >= plan.watchers || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut sent = Vec::new();
    let mut delivery = Vec::new();
    let mut counts = vec![0usize; plan.watchers];
    let start = Instant::now();
    for e in 0..plan.fanout_events {
        let at = Instant::now();
        let obj = api
            .call("GET", &format!("{CMS}/cm-0"), None)
            .await
            .context("read cm-0")?;
        let mut obj = obj;
        obj["data"]["fanout"] = json!(e.to_string());
        obj["metadata"]
            .as_object_mut()
            .map(|m| m.remove("resourceVersion"));
        api.call("PUT", &format!("{CMS}/cm-0"), Some(&obj)).await?;
        sent.push(at);
        // Collect this event from every watcher before the next write.
        let mut got = 0;
        while got < plan.watchers {
            match tokio::time::timeout(PHASE_LIMIT, rx.recv()).await {
                Ok(Some((w, ev, when))) if ev["type"] == "MODIFIED" => {
                    counts[w] += 1;
                    delivery.push(when.duration_since(at));
                    got += 1;
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    }
    let elapsed = start.elapsed();
    let complete = counts.iter().filter(|c| **c == plan.fanout_events).count();
    for r in readers {
        r.abort();
    }
    let stats = Stats {
        name: "fan-out delivery",
        latencies: delivery,
        elapsed,
    };
    stats.print(backend);
    println!(
        "{backend:<9} {} watchers x {} events: {complete} watchers received every event",
        plan.watchers, plan.fanout_events
    );
    let _ = stop.send(());
    serving.abort();
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let embedded_only = args.iter().any(|a| a == "--embedded-only");
    let plan = Plan::new(quick);
    println!("plan: {plan:?}");
    println!(
        "{:<9} {:<22} {:>7} {:>10} {:>9} {:>9}",
        "backend", "operation", "count", "ops/s", "p50 ms", "p99 ms"
    );
    let dir = tempfile::tempdir()?;
    let embedded = EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("store.redb"))).await?;
    bench_backend("embedded", Arc::new(embedded), plan).await?;
    if !embedded_only {
        let etcd = EtcdCluster::start(1).await?;
        let store = EtcdStore::connect(EtcdConfig::new(etcd.client_urls()).prefix("/")).await?;
        bench_backend("etcd", Arc::new(store), plan).await?;
    }
    Ok(())
}
