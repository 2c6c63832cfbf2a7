//! `bench-pods` (`cargo xtask bench pods`): pod startup latency from creation to
//! Running-and-Ready as seen through a watch, p50/p99, sequentially and 30 at once, and
//! pod deletion time (delete call to the watch's deletion event).
//!
//! Real components: the control plane binary and the node agent (kubelet only, with its
//! own containerd and runc) in network namespaces of their own, as the kubelet tests run
//! them (`coxswain_tests::kubelet_env`); images from busybox-static. Goal: 1 s p99.
//!
//! Where the time goes: around every run the bench reads the kubelet's metrics (the steps of
//! each pod's start and termination, every CRI call) and the CPU time of the control plane,
//! the agent, containerd (with the CNI plugins it runs) and the shims (with runc), and prints
//! the differences; its own watch gives the API server's delivery time. Then it times the
//! runtime alone, the same sandboxes and containers created straight over CRI without the
//! kubelet or the API server, sequentially and 30 at once: the floor of what the kubelet
//! can reach on this machine. Writes `target/bench/pods.json`.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::{Read, Write},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use coxswain_tests::kubelet_env::{BUSYBOX, EnvOptions, KubeletEnv};
use futures::StreamExt;
use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{DeleteParams, PostParams},
    runtime::watcher,
};
use serde_json::{Value, json};

/// The container every pod runs: idle (no CPU taken from the runtime while others start)
/// and exiting at once on SIGTERM (the `wait` builtin returns when a trapped signal comes).
const COMMAND: &str = "trap 'exit 0' TERM; sleep 3600 & wait";

struct Args {
    sequential: usize,
    parallel: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args { sequential: 20, parallel: 30 };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.sequential = 5,
            "--sequential" => args.sequential = it.next().context("--sequential N")?.parse()?,
            "--parallel" => args.parallel = it.next().context("--parallel N")?.parse()?,
            other => bail!("unknown argument {other:?} (expected --quick, --sequential N, --parallel N)"),
        }
    }
    Ok(args)
}

fn ready(p: &Pod) -> bool {
    let Some(status) = &p.status else { return false };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn pod(name: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"bench": "pods"}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "c", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", COMMAND],
            }],
        },
    }))
    .expect("static pod")
}

/// What the watch saw of one pod.
#[derive(Debug, Default, Clone, Copy)]
struct Sighting {
    added: Option<Instant>,
    ready: Option<Instant>,
    deleted: Option<Instant>,
}

/// What the watch saw, by pod name.
type Seen = std::sync::Arc<std::sync::Mutex<HashMap<String, Sighting>>>;

fn spawn_watch(api: Api<Pod>, seen: Seen) {
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default().labels("bench=pods")).boxed();
        while let Some(event) = stream.next().await {
            let now = Instant::now();
            let mut seen = seen.lock().unwrap();
            match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    let e = seen.entry(p.metadata.name.clone().unwrap_or_default()).or_default();
                    e.added.get_or_insert(now);
                    if ready(&p) {
                        e.ready.get_or_insert(now);
                    }
                }
                Ok(watcher::Event::Delete(p)) => {
                    let e = seen.entry(p.metadata.name.clone().unwrap_or_default()).or_default();
                    e.deleted.get_or_insert(now);
                }
                _ => {}
            }
        }
    });
}

async fn wait_for(seen: &Seen, name: &str, what: fn(&Sighting) -> Option<Instant>, timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = seen.lock().unwrap().get(name).and_then(what) {
            return Ok(t);
        }
        if Instant::now() > deadline {
            bail!("pod {name} not seen as expected within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn percentiles(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return json!({"n": 0});
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    json!({"n": v.len(), "p50_s": at(0.5), "p99_s": at(0.99), "max_s": v[v.len() - 1], "mean_s": v.iter().sum::<f64>() / v.len() as f64})
}

/// One histogram series of a metrics scrape.
#[derive(Debug, Default, Clone)]
struct Series {
    count: f64,
    sum: f64,
    /// (upper bound, cumulative count).
    buckets: Vec<(f64, f64)>,
}

/// Histogram series by (metric, label value).
type Scrape = BTreeMap<(String, String), Series>;

/// Parses the histograms of an OpenMetrics text exposition.
fn parse_metrics(text: &str) -> Scrape {
    let mut out = Scrape::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((head, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = head.split_once('{').map_or((head, ""), |(n, l)| (n, l.trim_end_matches('}')));
        let mut label = String::new();
        let mut le = None;
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else { continue };
            let v = v.trim_matches('"');
            if k == "le" {
                le = Some(if v == "+Inf" { f64::INFINITY } else { v.parse().unwrap_or(f64::INFINITY) });
            } else {
                label = v.to_owned();
            }
        }
        let (metric, part) = if let Some(m) = name.strip_suffix("_bucket") {
            (m, "bucket")
        } else if let Some(m) = name.strip_suffix("_sum") {
            (m, "sum")
        } else if let Some(m) = name.strip_suffix("_count") {
            (m, "count")
        } else {
            continue;
        };
        let s = out.entry((metric.to_owned(), label)).or_default();
        match part {
            "bucket" => s.buckets.push((le.unwrap_or(f64::INFINITY), value)),
            "sum" => s.sum = value,
            _ => s.count = value,
        }
    }
    out
}

/// `after - before`, per series (series that did not move are left out).
fn delta(after: &Scrape, before: &Scrape) -> Scrape {
    let mut out = Scrape::new();
    for (key, a) in after {
        let b = before.get(key).cloned().unwrap_or_default();
        if a.count - b.count < 0.5 {
            continue;
        }
        let buckets = a
            .buckets
            .iter()
            .map(|(le, n)| (*le, n - b.buckets.iter().find(|(l, _)| l == le).map_or(0.0, |(_, m)| *m)))
            .collect();
        out.insert(key.clone(), Series { count: a.count - b.count, sum: a.sum - b.sum, buckets });
    }
    out
}

/// Count, mean and the p50/p99 bucket bounds (the histogram's resolution: 1.5x buckets).
fn summarize(s: &Series) -> Value {
    let bound = |q: f64| {
        s.buckets
            .iter()
            .find(|(_, n)| *n >= q * s.count)
            .map(|(le, _)| if le.is_finite() { json!(le) } else { json!("inf") })
            .unwrap_or(Value::Null)
    };
    json!({"n": s.count, "mean_s": s.sum / s.count, "p50_le_s": bound(0.5), "p99_le_s": bound(0.99)})
}

/// The kubelet's metrics, read from the node's namespace.
fn scrape(env: &KubeletEnv) -> Result<Scrape> {
    let text = env.veth.b.run_in(|| {
        let mut s = std::net::TcpStream::connect_timeout(&"127.0.0.1:10249".parse()?, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })?;
    Ok(parse_metrics(&text))
}

/// CPU seconds (user + system, reaped children included) of the processes of this
/// benchmark, by component.
fn cpu(env: &KubeletEnv) -> BTreeMap<&'static str, f64> {
    let dir = env.dir.path().display().to_string();
    // USER_HZ: 100 on every Linux the project runs on (`getconf CLK_TCK`).
    let ticks = 100.0;
    let mut out = BTreeMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for p in procs.flatten() {
        if !p.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmdline = String::from_utf8_lossy(&std::fs::read(p.path().join("cmdline")).unwrap_or_default()).replace('\0', " ");
        if !cmdline.contains(&dir) {
            continue;
        }
        let component = if cmdline.contains("containerd-shim") {
            "shims (and runc)"
        } else if cmdline.contains("coxswain-node-agent") {
            "agent (kubelet)"
        } else if cmdline.contains("coxswain-control-plane") {
            "control plane"
        } else if cmdline.contains("containerd") {
            "containerd (and CNI plugins)"
        } else {
            continue;
        };
        let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
        let Some((_, rest)) = stat.rsplit_once(") ") else { continue };
        let f: Vec<f64> = rest.split(' ').map(|x| x.parse().unwrap_or(0.0)).collect();
        if f.len() > 14 {
            *out.entry(component).or_insert(0.0) += (f[11] + f[12] + f[13] + f[14]) / ticks;
        }
    }
    out
}

/// What the machine and the components did during one run.
struct Window {
    metrics: Scrape,
    cpu: BTreeMap<&'static str, f64>,
    at: Instant,
    load: String,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split(' ').take(3).collect::<Vec<_>>().join(" ")
}

impl Window {
    fn open(env: &KubeletEnv) -> Result<Window> {
        Ok(Window { metrics: scrape(env)?, cpu: cpu(env), at: Instant::now(), load: load_average() })
    }

    /// The breakdown since `open`: kubelet steps, CRI calls, CPU per component.
    fn close(self, env: &KubeletEnv) -> Result<Value> {
        let metrics = delta(&scrape(env)?, &self.metrics);
        let wall = self.at.elapsed().as_secs_f64();
        let cpu_now = cpu(env);
        let section = |metric: &str| -> Value {
            metrics
                .iter()
                .filter(|((m, _), _)| m == metric)
                .map(|((_, label), s)| (label.clone(), summarize(s)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        Ok(json!({
            "wall_s": wall,
            "load_average": self.load,
            "kubelet_start_phases": section("coxswain_kubelet_pod_start_phase_duration_seconds"),
            "kubelet_stop_phases": section("coxswain_kubelet_pod_stop_phase_duration_seconds"),
            "cri_calls": section("coxswain_kubelet_runtime_operations_duration_seconds"),
            "cpu_s": cpu_now
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v - self.cpu.get(k).copied().unwrap_or(0.0))))
                .collect::<serde_json::Map<_, _>>(),
        }))
    }
}

async fn measure(client: kube::Client, env: &KubeletEnv, args: &Args) -> Result<Value> {
    let node = env.node_name.clone();
    let api: Api<Pod> = Api::namespaced(client, "default");
    let seen: Seen = Default::default();
    spawn_watch(api.clone(), seen.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let timeout = Duration::from_secs(120);
    let added = |s: &Sighting| s.added;
    let ready = |s: &Sighting| s.ready;
    let deleted = |s: &Sighting| s.deleted;

    // Warm-up (first sandbox, image unpack, CNI bridge creation) is not measured.
    api.create(&PostParams::default(), &pod("warmup", &node)).await?;
    wait_for(&seen, "warmup", ready, timeout).await?;
    api.delete("warmup", &DeleteParams::default()).await?;
    wait_for(&seen, "warmup", deleted, timeout).await?;

    let (mut start_seq, mut delete_seq, mut create_call, mut delivery) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let window = Window::open(env)?;
    for i in 0..args.sequential {
        let name = format!("seq-{i}");
        let t0 = Instant::now();
        api.create(&PostParams::default(), &pod(&name, &node)).await?;
        create_call.push(t0.elapsed().as_secs_f64());
        start_seq.push((wait_for(&seen, &name, ready, timeout).await? - t0).as_secs_f64());
        delivery.push((wait_for(&seen, &name, added, timeout).await? - t0).as_secs_f64());
        let t1 = Instant::now();
        api.delete(&name, &DeleteParams::default()).await?;
        delete_seq.push((wait_for(&seen, &name, deleted, timeout).await? - t1).as_secs_f64());
        eprintln!("sequential {}/{}: start {:.3}s, delete {:.3}s", i + 1, args.sequential, start_seq[i], delete_seq[i]);
    }
    let sequential = window.close(env)?;

    let names: Vec<String> = (0..args.parallel).map(|i| format!("par-{i}")).collect();
    let window = Window::open(env)?;
    let t0 = Instant::now();
    futures::future::try_join_all(names.iter().map(|n| {
        let api = api.clone();
        let p = pod(n, &node);
        async move { api.create(&PostParams::default(), &p).await }
    }))
    .await?;
    let mut start_par = Vec::new();
    let mut delivery_par = Vec::new();
    for n in &names {
        start_par.push((wait_for(&seen, n, ready, timeout).await? - t0).as_secs_f64());
        delivery_par.push((wait_for(&seen, n, added, timeout).await? - t0).as_secs_f64());
    }
    eprintln!("parallel: all {} Ready after {:.3}s", names.len(), t0.elapsed().as_secs_f64());
    let parallel_start = window.close(env)?;
    let window = Window::open(env)?;
    let t1 = Instant::now();
    futures::future::try_join_all(names.iter().map(|n| {
        let api = api.clone();
        async move { api.delete(n, &DeleteParams::default()).await }
    }))
    .await?;
    let mut delete_par = Vec::new();
    for n in &names {
        delete_par.push((wait_for(&seen, n, deleted, timeout).await? - t1).as_secs_f64());
    }
    let parallel_delete = window.close(env)?;
    Ok(json!({
        "startup_sequential": percentiles(start_seq),
        "deletion_sequential": percentiles(delete_seq),
        "startup_parallel": percentiles(start_par),
        "deletion_parallel": percentiles(delete_par),
        "api": {
            "create_call_sequential": percentiles(create_call),
            "watch_added_after_create_sequential": percentiles(delivery),
            "watch_added_after_first_create_parallel": percentiles(delivery_par),
        },
        "breakdown": {
            "sequential": sequential,
            "parallel_start": parallel_start,
            "parallel_delete": parallel_delete,
        },
        "parallel": args.parallel,
        "goal_p99_s": 1.0,
    }))
}

/// The sandbox and container of pod `name` as the kubelet would ask for them (no volumes).
fn runtime_only_configs(env: &KubeletEnv, name: &str) -> (cri::PodSandboxConfig, cri::ContainerConfig) {
    let uid = format!("bench-runtime-{name}");
    let log_dir = env.dir.path().join("runtime-only-logs").join(name);
    let _ = std::fs::create_dir_all(&log_dir);
    let labels: HashMap<String, String> = [(coxswain_kubelet::LABEL_POD_UID.to_owned(), uid.clone())].into();
    let sandbox = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata { name: name.into(), uid, namespace: "bench".into(), attempt: 0 }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        labels: labels.clone(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption { network: cri::NamespaceMode::Pod as i32, pid: cri::NamespaceMode::Container as i32, ipc: cri::NamespaceMode::Pod as i32, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let container = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "c".into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: BUSYBOX.into(), ..Default::default() }),
        command: vec!["sh".into(), "-c".into(), COMMAND.into()],
        labels,
        log_path: "c/0.log".into(),
        ..Default::default()
    };
    (sandbox, container)
}

/// One pod straight over CRI: RunPodSandbox, PodSandboxStatus, ImageStatus,
/// CreateContainer, StartContainer. Returns the sandbox id and the seconds taken.
async fn runtime_only_start(cri: &coxswain_kubelet::Cri, env: &KubeletEnv, name: &str) -> Result<(String, f64)> {
    let t = Instant::now();
    let (sandbox_config, container) = runtime_only_configs(env, name);
    let id = cri.run_sandbox(sandbox_config.clone()).await?;
    cri.sandbox_status(&id).await?;
    cri.image_id(BUSYBOX).await?;
    let c = cri.create_container(&id, container, sandbox_config).await?;
    cri.start_container(&c, "c").await?;
    Ok((id, t.elapsed().as_secs_f64()))
}

/// StopContainer (its SIGTERM ends it), StopPodSandbox, RemovePodSandbox.
async fn runtime_only_stop(cri: &coxswain_kubelet::Cri, id: &str) -> Result<f64> {
    let t = Instant::now();
    for c in cri.list_containers(HashMap::new()).await?.iter().filter(|c| c.pod_sandbox_id == id) {
        cri.stop_container(&c.id, 30).await?;
    }
    cri.stop_sandbox(id).await?;
    cri.remove_sandbox(id).await?;
    Ok(t.elapsed().as_secs_f64())
}

/// The runtime alone: the floor under the kubelet's figures on this machine.
async fn runtime_only(env: &KubeletEnv, args: &Args) -> Result<Value> {
    let cri = coxswain_kubelet::Cri::connect(&env.containerd_socket()).await?;
    let (mut start_seq, mut stop_seq) = (Vec::new(), Vec::new());
    for i in 0..args.sequential {
        let (id, took) = runtime_only_start(&cri, env, &format!("rt-seq-{i}")).await?;
        start_seq.push(took);
        stop_seq.push(runtime_only_stop(&cri, &id).await?);
    }
    let before = cpu(env);
    let t0 = Instant::now();
    let started = futures::future::try_join_all((0..args.parallel).map(|i| {
        let cri = cri.clone();
        async move {
            let (id, _) = runtime_only_start(&cri, env, &format!("rt-par-{i}")).await?;
            Ok::<_, anyhow::Error>((id, t0.elapsed().as_secs_f64()))
        }
    }))
    .await?;
    let cpu_start: serde_json::Map<String, Value> =
        cpu(env).iter().map(|(k, v)| (k.to_string(), json!(v - before.get(k).copied().unwrap_or(0.0)))).collect();
    let wall_start = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let stopped = futures::future::try_join_all(started.iter().map(|(id, _)| {
        let cri = cri.clone();
        async move {
            runtime_only_stop(&cri, id).await?;
            Ok::<_, anyhow::Error>(t1.elapsed().as_secs_f64())
        }
    }))
    .await?;
    Ok(json!({
        "startup_sequential": percentiles(start_seq),
        "deletion_sequential": percentiles(stop_seq),
        "startup_parallel": percentiles(started.iter().map(|(_, t)| *t).collect()),
        "deletion_parallel": percentiles(stopped),
        "parallel_start_wall_s": wall_start,
        "parallel_start_cpu_s": cpu_start,
    }))
}

fn fmt_s(v: &Value) -> String {
    v.as_f64().map_or_else(|| v.to_string(), |s| format!("{:.3}", s))
}

/// A human-readable summary of the report.
fn print_summary(report: &Value) {
    let line = |title: &str, v: &Value| {
        println!("{title:<34} p50 {}s  p99 {}s  max {}s", fmt_s(&v["p50_s"]), fmt_s(&v["p99_s"]), fmt_s(&v["max_s"]));
    };
    let k = &report["kubelet"];
    let parallel = k["parallel"].as_u64().unwrap_or(0);
    println!("== through the kubelet (creation to Ready / delete to gone, seen by a watch)");
    line("startup, one at a time", &k["startup_sequential"]);
    line(&format!("startup, {parallel} at once"), &k["startup_parallel"]);
    line("deletion, one at a time", &k["deletion_sequential"]);
    line(&format!("deletion, {parallel} at once"), &k["deletion_parallel"]);
    line("  API create call", &k["api"]["create_call_sequential"]);
    line("  watch delivers ADDED", &k["api"]["watch_added_after_create_sequential"]);
    for (name, b) in k["breakdown"].as_object().into_iter().flatten() {
        println!("-- {name}: {:.2}s wall, load average {}", b["wall_s"].as_f64().unwrap_or(0.0), b["load_average"].as_str().unwrap_or(""));
        for section in ["kubelet_start_phases", "kubelet_stop_phases", "cri_calls"] {
            for (label, s) in b[section].as_object().into_iter().flatten() {
                println!(
                    "   {section:<21} {label:<18} n {:>4}  mean {}s  p50 <= {}s  p99 <= {}s",
                    s["n"],
                    fmt_s(&s["mean_s"]),
                    fmt_s(&s["p50_le_s"]),
                    fmt_s(&s["p99_le_s"])
                );
            }
        }
        for (who, secs) in b["cpu_s"].as_object().into_iter().flatten() {
            println!("   cpu                   {who:<30} {}s", fmt_s(secs));
        }
    }
    let r = &report["runtime_only"];
    println!("== the runtime alone (straight over CRI: sandbox with CNI, image status, create, start)");
    line("startup, one at a time", &r["startup_sequential"]);
    line(&format!("startup, {parallel} at once"), &r["startup_parallel"]);
    line("deletion, one at a time", &r["deletion_sequential"]);
    line(&format!("deletion, {parallel} at once"), &r["deletion_parallel"]);
    for (who, secs) in r["parallel_start_cpu_s"].as_object().into_iter().flatten() {
        println!("   cpu ({parallel} at once)      {who:<30} {}s", fmt_s(secs));
    }
    println!("load average at the end: {}", load_average());
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let env = KubeletEnv::start(201, EnvOptions { pod_cidr_flag: true });
    // Enter the control plane's namespace before the runtime's threads exist: they inherit it.
    let ns = File::open(format!("/run/netns/{}", env.veth.a.name())).context("open the control plane's netns")?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).context("enter the control plane's netns")?;
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(&env.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        let client = kube::Client::try_from(config)?;
        let kubelet = measure(client, &env, &args).await?;
        let runtime = runtime_only(&env, &args).await?;
        Ok::<_, anyhow::Error>(json!({"kubelet": kubelet, "runtime_only": runtime, "load_average_end": load_average()}))
    });
    drop(rt);
    let report = report?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    print_summary(&report);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("pods.json"), serde_json::to_string_pretty(&report)?)?;
    Ok(())
}
