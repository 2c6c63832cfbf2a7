//! `bench-pods` (`cargo xtask bench pods`): pod startup latency from creation to
//! Running-and-Ready as seen through a watch, p50/p99, sequentially and 30 at once, and
//! pod deletion time (delete call to the watch's deletion event).
//!
//! Real components: the control plane binary and the node agent (kubelet only, with its
//! own containerd and runc) in network namespaces of their own, as the kubelet tests run
//! them (`coxswain_tests::kubelet_env`); images from busybox-static. Goal: 1 s p99.
//! Writes `target/bench/pods.json`.

use std::{
    collections::HashMap,
    fs::File,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use coxswain_tests::kubelet_env::{BUSYBOX, EnvOptions, KubeletEnv};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{DeleteParams, PostParams},
    runtime::watcher,
};
use serde_json::json;

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
                "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"],
            }],
        },
    }))
    .expect("static pod")
}

/// What the watch saw, by pod name: (first Ready, deleted).
type Seen = std::sync::Arc<std::sync::Mutex<HashMap<String, (Option<Instant>, Option<Instant>)>>>;

fn spawn_watch(api: Api<Pod>, seen: Seen) {
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default().labels("bench=pods")).boxed();
        while let Some(event) = stream.next().await {
            let now = Instant::now();
            let mut seen = seen.lock().unwrap();
            match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) if ready(&p) => {
                    let e = seen.entry(p.metadata.name.clone().unwrap_or_default()).or_default();
                    e.0.get_or_insert(now);
                }
                Ok(watcher::Event::Delete(p)) => {
                    let e = seen.entry(p.metadata.name.clone().unwrap_or_default()).or_default();
                    e.1.get_or_insert(now);
                }
                _ => {}
            }
        }
    });
}

async fn wait_for(seen: &Seen, name: &str, deleted: bool, timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(e) = seen.lock().unwrap().get(name)
            && let Some(t) = if deleted { e.1 } else { e.0 }
        {
            return Ok(t);
        }
        if Instant::now() > deadline {
            bail!("pod {name} not {} within {timeout:?}", if deleted { "deleted" } else { "Ready" });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn percentiles(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    json!({"n": v.len(), "p50_s": at(0.5), "p99_s": at(0.99), "max_s": v[v.len() - 1]})
}

async fn measure(client: kube::Client, node: String, args: &Args) -> Result<serde_json::Value> {
    let api: Api<Pod> = Api::namespaced(client, "default");
    let seen: Seen = Default::default();
    spawn_watch(api.clone(), seen.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let timeout = Duration::from_secs(120);

    // Warm-up (first sandbox, image unpack, CNI bridge creation) is not measured.
    api.create(&PostParams::default(), &pod("warmup", &node)).await?;
    wait_for(&seen, "warmup", false, timeout).await?;
    api.delete("warmup", &DeleteParams::default()).await?;
    wait_for(&seen, "warmup", true, timeout).await?;

    let (mut start_seq, mut delete_seq) = (Vec::new(), Vec::new());
    for i in 0..args.sequential {
        let name = format!("seq-{i}");
        let t0 = Instant::now();
        api.create(&PostParams::default(), &pod(&name, &node)).await?;
        start_seq.push((wait_for(&seen, &name, false, timeout).await? - t0).as_secs_f64());
        let t1 = Instant::now();
        api.delete(&name, &DeleteParams::default()).await?;
        delete_seq.push((wait_for(&seen, &name, true, timeout).await? - t1).as_secs_f64());
        eprintln!("sequential {}/{}: start {:.3}s, delete {:.3}s", i + 1, args.sequential, start_seq[i], delete_seq[i]);
    }

    let names: Vec<String> = (0..args.parallel).map(|i| format!("par-{i}")).collect();
    let t0 = Instant::now();
    futures::future::try_join_all(names.iter().map(|n| {
        let api = api.clone();
        let p = pod(n, &node);
        async move { api.create(&PostParams::default(), &p).await }
    }))
    .await?;
    let mut start_par = Vec::new();
    for n in &names {
        start_par.push((wait_for(&seen, n, false, timeout).await? - t0).as_secs_f64());
    }
    eprintln!("parallel: all {} Ready after {:.3}s", names.len(), t0.elapsed().as_secs_f64());
    let t1 = Instant::now();
    futures::future::try_join_all(names.iter().map(|n| {
        let api = api.clone();
        async move { api.delete(n, &DeleteParams::default()).await }
    }))
    .await?;
    let mut delete_par = Vec::new();
    for n in &names {
        delete_par.push((wait_for(&seen, n, true, timeout).await? - t1).as_secs_f64());
    }
    Ok(json!({
        "startup_sequential": percentiles(start_seq),
        "deletion_sequential": percentiles(delete_seq),
        "startup_parallel": percentiles(start_par),
        "deletion_parallel": percentiles(delete_par),
        "parallel": args.parallel,
        "goal_p99_s": 1.0,
    }))
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
        measure(client, env.node_name.clone(), &args).await
    });
    drop(rt);
    let report = report?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("pods.json"), serde_json::to_string_pretty(&report)?)?;
    Ok(())
}
