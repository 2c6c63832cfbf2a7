//! `cargo xtask up` / `down`: a whole local cluster on this machine.
//!
//! Topology (instance 0; other instances shift every address, name and port
//! so that the end-to-end tests can run beside a user's cluster):
//!
//! ```text
//!  host network namespace = node-1 (10.250.0.1, pods 10.244.1.0/24 on cox-pods)
//!      │ cox-nodes: the node bridge, 10.250.0.1/24 (node-1's uplink)
//!      ├── cox-n2 ══ uplink0 in netns cox-node2 = node-2 (10.250.0.2, pods 10.244.2.0/24)
//!      └── cox-n3 ══ uplink0 in netns cox-node3 = node-3 (10.250.0.3, pods 10.244.3.0/24)
//! ```
//!
//! Every node runs its own node agent (kubelet with its own containerd, and
//! the eBPF service proxy on its pod interfaces and its uplink) and has a
//! route to every other node's pod CIDR through that node's address. The
//! Service CIDR is routed into the node bridge on every node, and traffic
//! forwarded from our bridges may not use the host's default route (policy
//! rules), so a packet the dataplane failed to translate never leaves the
//! machine. The machine's own uplink is never touched.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    build_ebpf,
    cmd::{exec, is_root, probe, repo_root, run_quiet, step},
    setup,
};

/// `--proxy-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyMode {
    Ebpf,
    Iptables,
    Nftables,
}

impl ProxyMode {
    fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Ebpf => "ebpf",
            ProxyMode::Iptables => "iptables",
            ProxyMode::Nftables => "nftables",
        }
    }
}

/// Options of `up`.
#[derive(Debug, clap::Args)]
pub struct UpOptions {
    /// Number of nodes: the first runs in the host's network namespace,
    /// each further one in a network namespace of its own.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub nodes: u8,
    /// Where state, logs, images and pid files live.
    #[arg(long, default_value = "/var/lib/coxswain")]
    pub data_dir: PathBuf,
    /// How Services are load-balanced on every node.
    #[arg(long, value_enum, default_value_t = ProxyMode::Ebpf)]
    pub proxy_mode: ProxyMode,
    /// Store the cluster in a local 3-member etcd cluster instead of the
    /// embedded store.
    #[arg(long)]
    pub etcd: bool,
    /// Use debug builds (quicker to build, slower to run).
    #[arg(long)]
    pub debug: bool,
    /// Do not build; use the binaries already built.
    #[arg(long)]
    pub no_build: bool,
    /// Do not deploy the demo application.
    #[arg(long)]
    pub no_demo: bool,
    /// How long a node may go without renewing its Lease before it is
    /// marked NotReady (the control plane's `--node-monitor-grace-period`).
    #[arg(long, default_value = "40s")]
    pub node_monitor_grace_period: String,
    /// Which of several side-by-side clusters this is (0 is the default;
    /// each instance has its own addresses, interface names and ports).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=3))]
    pub instance: u8,
}

/// Options of `down`.
#[derive(Debug, clap::Args)]
pub struct DownOptions {
    /// Where state, logs and pid files live.
    #[arg(long, default_value = "/var/lib/coxswain")]
    pub data_dir: PathBuf,
    /// Also delete the data directory.
    #[arg(long)]
    pub purge: bool,
}

/// Names, addresses and paths of one cluster instance.
#[derive(Debug, Clone)]
pub struct Layout {
    instance: u8,
    nodes: u8,
    data: PathBuf,
}

/// The demo image tags `up` builds.
const DEMO_IMAGE: &str = "coxswain.local/demo";
const DEMO_TAGS: [&str; 2] = ["v1", "v2"];

impl Layout {
    fn new(instance: u8, nodes: u8, data: &Path) -> Layout {
        Layout {
            instance,
            nodes,
            data: data.to_owned(),
        }
    }

    fn tag(&self) -> String {
        match self.instance {
            0 => "cox".into(),
            i => format!("cox{i}"),
        }
    }
    fn node_bridge(&self) -> String {
        format!("{}-nodes", self.tag())
    }
    fn pod_bridge(&self) -> String {
        format!("{}-pods", self.tag())
    }
    fn netns(&self, k: u8) -> String {
        format!("{}-node{k}", self.tag())
    }
    fn host_veth(&self, k: u8) -> String {
        format!("{}-n{k}", self.tag())
    }
    /// Node `k`'s uplink, in its own namespace.
    fn uplink(&self, k: u8) -> String {
        if k == 1 { self.node_bridge() } else { "uplink0".into() }
    }
    fn node_name(&self, k: u8) -> String {
        format!("node-{k}")
    }
    fn node_ip(&self, k: u8) -> String {
        format!("10.{}.0.{k}", 250 + self.instance)
    }
    fn cluster_cidr(&self) -> String {
        format!("10.{}.0.0/16", 244 + self.instance)
    }
    fn pod_cidr(&self, k: u8) -> String {
        format!("10.{}.{k}.0/24", 244 + self.instance)
    }
    fn service_cidr(&self) -> String {
        format!("10.{}.0.0/12", 96 + 16 * u32::from(self.instance))
    }
    fn api_addr(&self) -> String {
        format!("{}:6443", self.node_ip(1))
    }
    fn agent_addr(&self, k: u8) -> String {
        format!("{}:10249", self.node_ip(k))
    }
    fn pin_dir(&self, k: u8) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/{}-node{k}", self.tag()))
    }
    fn run_dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/{}", self.tag()))
    }
    fn node_dir(&self, k: u8) -> PathBuf {
        self.data.join("nodes").join(self.node_name(k))
    }
    fn pid_dir(&self) -> PathBuf {
        self.data.join("run")
    }
    fn log_dir(&self) -> PathBuf {
        self.data.join("logs")
    }
    fn kubeconfig(&self) -> PathBuf {
        self.data.join("admin.kubeconfig")
    }
    /// Policy rule preference of the first of our rules.
    fn rule_pref(&self) -> u32 {
        3000 + 10 * u32::from(self.instance)
    }
    fn etcd_client_port(&self, member: u8) -> u16 {
        12300 + 10 * u16::from(self.instance) + u16::from(member)
    }
    fn etcd_peer_port(&self, member: u8) -> u16 {
        12350 + 10 * u16::from(self.instance) + u16::from(member)
    }
    fn state_file(&self) -> PathBuf {
        self.data.join("run/cluster.env")
    }
}

/// Where cargo put the binaries of `profile` (the target directory of the
/// running xtask, which honours `CARGO_TARGET_DIR`).
fn bin_dir(profile: &str) -> PathBuf {
    let target = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_owned()))
        .unwrap_or_else(|| repo_root().join("target"));
    target.join(profile)
}

/// The pid recorded for `name`, if that process still runs.
fn running(layout: &Layout, name: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(layout.pid_dir().join(format!("{name}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    alive(pid).then_some(pid)
}

/// Whether `pid` runs (a zombie, a child that exited and was not reaped,
/// does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().to_owned()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// The cgroup v2 hierarchy (`/sys/fs/cgroup` on unified systems,
/// `/sys/fs/cgroup/unified` on hybrid ones).
fn cgroup2_root() -> Result<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let mut fields = l.split(' ');
            let (_, path, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "cgroup2").then(|| path.to_owned())
        })
        .context("no cgroup v2 hierarchy is mounted (socket load balancing needs one)")
}

fn components(layout: &Layout) -> Vec<String> {
    let mut names = vec!["control-plane".to_owned()];
    names.extend((0..3).map(|m| format!("etcd-{m}")));
    names.extend((1..=layout.nodes).map(|k| format!("agent-{k}")));
    names
}

/// Starts `cmd` detached from this process (its own process group, output
/// to `log`), records its pid as `name`.
fn spawn(layout: &Layout, name: &str, cmd: &mut Command) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(layout.log_dir())?;
    std::fs::create_dir_all(layout.pid_dir())?;
    let log_path = layout.log_dir().join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("failed to open {}", log_path.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("failed to start {name}"))?;
    let pid = child.id() as i32;
    std::fs::write(layout.pid_dir().join(format!("{name}.pid")), pid.to_string())?;
    Ok(pid)
}

fn log_tail(layout: &Layout, name: &str) -> String {
    let text = std::fs::read_to_string(layout.log_dir().join(format!("{name}.log"))).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Waits for `check`, failing with `what` and the log of `name`.
fn wait(layout: &Layout, name: &str, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        if running(layout, name).is_none() && name != "nodes" {
            bail!("{name} exited while waiting for {what}; its log ({}):\n{}", layout.log_dir().join(format!("{name}.log")).display(), log_tail(layout, name));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("{what} did not happen within {timeout:?}; log of {name}:\n{}", log_tail(layout, name))
}

/// A minimal HTTP/1.0 GET (xtask stays free of an HTTP client).
pub fn http_get(addr: &str, path: &str) -> Result<String> {
    let sock: std::net::SocketAddr = addr.parse().with_context(|| format!("bad address {addr}"))?;
    let mut stream = TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    anyhow::ensure!(head.contains(" 200 "), "GET {addr}{path}: {head}");
    Ok(body.to_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run_quiet(Command::new("ip").args(args))
}

/// A command run in node `k`'s network namespace (the host's for node 1).
fn in_node(layout: &Layout, k: u8, program: impl AsRef<std::ffi::OsStr>) -> Command {
    if k == 1 {
        Command::new(program)
    } else {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", layout.netns(k))).arg("--").arg(program);
        cmd
    }
}

fn kubectl(layout: &Layout) -> Command {
    let mut cmd = Command::new(setup::venv_dir().join("bin/kubectl"));
    cmd.arg("--kubeconfig").arg(layout.kubeconfig());
    cmd
}

fn read_state(data_dir: &Path) -> Option<Layout> {
    let text = std::fs::read_to_string(data_dir.join("run/cluster.env")).ok()?;
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.trim().parse::<u8>().ok())
    };
    Some(Layout::new(get("instance")?, get("nodes")?, data_dir))
}

/// Brings the whole cluster up.
pub fn up(opts: &UpOptions) -> Result<()> {
    if !is_root() {
        bail!("`cargo xtask up` starts containerd, loads eBPF programs and creates network namespaces: run it as root");
    }
    let start = Instant::now();
    if let Some(previous) = read_state(&opts.data_dir) {
        let alive: Vec<String> = components(&previous)
            .into_iter()
            .filter(|c| running(&previous, c).is_some())
            .collect();
        if !alive.is_empty() {
            step("up", format!("a cluster is already running from {} ({}); nothing changed", opts.data_dir.display(), alive.join(", ")));
            print_next_steps(&previous, None);
            return Ok(());
        }
    }
    let layout = Layout::new(opts.instance, opts.nodes, &opts.data_dir);
    // A dead cluster's leftovers (a crash, a reboot): clean them first.
    if link_exists(&layout.node_bridge()) || (2..=8).any(|k| netns_exists(&layout.netns(k))) {
        step("up", "leftovers of a previous cluster found: running `down` first");
        down(&DownOptions { data_dir: opts.data_dir.clone(), purge: false })?;
    }
    if setup::anything_missing() {
        step("up", "something is missing: running setup first");
        setup::run()?;
    }
    let profile = if opts.debug { "debug" } else { "release" };
    let object = if opts.no_build {
        let object = repo_root().join("target/bpfel-unknown-none/release/coxswain-ebpf");
        anyhow::ensure!(object.exists(), "{} is missing: run `cargo xtask build-ebpf --release`", object.display());
        object
    } else {
        let object = build_ebpf::run(&build_ebpf::Options { release: true })?;
        step("up", format!("building the control plane, the node agent and coxctl ({profile})"));
        let mut cargo = Command::new(env!("CARGO"));
        cargo.current_dir(repo_root()).args(["build", "--locked", "-p", "coxswain-control-plane", "-p", "coxswain-node-agent", "-p", "coxctl"]);
        if !opts.debug {
            cargo.arg("--release");
        }
        exec(&mut cargo)?;
        object
    };
    let bins = bin_dir(profile);
    for bin in ["coxswain-control-plane", "coxswain-node-agent", "coxctl"] {
        anyhow::ensure!(bins.join(bin).exists(), "{} is missing: build it (or drop --no-build)", bins.join(bin).display());
    }
    std::fs::create_dir_all(layout.pid_dir()).with_context(|| format!("failed to create {}", layout.data.display()))?;
    std::fs::write(
        layout.state_file(),
        format!("instance={}\nnodes={}\nproxy_mode={}\netcd={}\nprofile={profile}\n", layout.instance, layout.nodes, opts.proxy_mode.as_str(), opts.etcd),
    )?;

    step("up", format!("network: node bridge {} ({}/24), {} node(s)", layout.node_bridge(), layout.node_ip(1), layout.nodes));
    create_topology(&layout)?;

    let etcd_endpoints = if opts.etcd { Some(start_etcd(&layout)?) } else { None };
    start_control_plane(&layout, &bins, etcd_endpoints.as_deref(), &opts.node_monitor_grace_period)?;

    step("up", "building the demo images (busybox httpd)");
    let images = layout.data.join("images");
    std::fs::create_dir_all(&images)?;
    for tag in DEMO_TAGS {
        let script = "echo \"coxswain demo $DEMO_VERSION from $(hostname)\" > /tmp/index.html && exec httpd -f -p 80 -h /tmp";
        run_quiet(
            Command::new(bins.join("coxctl"))
                .args(["image", "build", &format!("{DEMO_IMAGE}:{tag}"), "-o"])
                .arg(images.join(format!("demo-{tag}.tar")))
                .args(["--entrypoint=sh", "--entrypoint=-c", &format!("--entrypoint={script}"), "--cmd=demo"])
                .args(["--env", &format!("DEMO_VERSION={tag}")]),
        )?;
    }

    let join = if layout.nodes > 1 { Some(join_arguments(&layout, &bins)?) } else { None };
    for k in 1..=layout.nodes {
        let join = if k == 1 { None } else { join.as_deref() };
        start_agent(&layout, k, &bins, &object, opts.proxy_mode, join)?;
    }
    step("up", format!("waiting for {} node(s) to be Ready", layout.nodes));
    let mut last_report = Instant::now();
    wait(&layout, "nodes", "every node Ready", Duration::from_secs(180), || {
        let ready = ready_nodes(&layout);
        if last_report.elapsed() > Duration::from_secs(5) {
            step("up", format!("  {ready}/{} node(s) Ready", layout.nodes));
            last_report = Instant::now();
        }
        for k in 1..=layout.nodes {
            if running(&layout, &format!("agent-{k}")).is_none() {
                return false;
            }
        }
        ready == usize::from(layout.nodes)
    })
    .map_err(|e| {
        let dead: Vec<String> = (1..=layout.nodes)
            .map(|k| format!("agent-{k}"))
            .filter(|a| running(&layout, a).is_none())
            .map(|a| format!("{a} exited; its log:\n{}", log_tail(&layout, &a)))
            .collect();
        e.context(dead.join("\n"))
    })?;

    let mut demo_ip = None;
    if !opts.no_demo {
        step("up", "deploying the demo: Deployment demo (3 replicas of busybox httpd) and Service demo");
        let manifest = demo_manifest();
        let mut apply = kubectl(&layout);
        apply.args(["apply", "-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = apply.spawn().context("failed to run kubectl")?;
        child.stdin.take().expect("stdin").write_all(manifest.as_bytes())?;
        let out = child.wait_with_output()?;
        anyhow::ensure!(out.status.success(), "kubectl apply of the demo failed: {}", String::from_utf8_lossy(&out.stderr));
        exec(kubectl(&layout).args(["rollout", "status", "deployment/demo", "--timeout=180s"]))
            .context("the demo Deployment did not become available")?;
        demo_ip = probe(kubectl(&layout).args(["get", "service", "demo", "-o", "jsonpath={.spec.clusterIP}"]));
    }
    step("up", format!("cluster ready in {:.0} s", start.elapsed().as_secs_f64()));
    print_next_steps(&layout, demo_ip.as_deref());
    Ok(())
}

fn demo_manifest() -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: demo
  labels: {{app: demo}}
spec:
  replicas: 3
  selector:
    matchLabels: {{app: demo}}
  template:
    metadata:
      labels: {{app: demo}}
    spec:
      containers:
      - name: httpd
        image: {DEMO_IMAGE}:v1
        imagePullPolicy: IfNotPresent
        ports:
        - {{name: http, containerPort: 80}}
        readinessProbe:
          httpGet: {{path: /, port: http}}
          periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata:
  name: demo
spec:
  type: NodePort
  selector: {{app: demo}}
  ports:
  - {{name: http, port: 80, targetPort: http}}
"#
    )
}

fn print_next_steps(layout: &Layout, demo_ip: Option<&str>) {
    let kubectl = setup::venv_dir().join("bin/kubectl");
    println!();
    println!("Kubeconfig: {}", layout.kubeconfig().display());
    println!("Try:");
    println!("  export KUBECONFIG={}", layout.kubeconfig().display());
    println!("  {} get nodes,pods -o wide", kubectl.display());
    let state = std::fs::read_to_string(layout.state_file()).unwrap_or_default();
    let ebpf = state.contains("proxy_mode=ebpf");
    match demo_ip {
        Some(ip) if !ip.is_empty() && ebpf => println!("  curl http://{ip}/        # the demo Service, balanced in the kernel"),
        Some(ip) if !ip.is_empty() => println!("  curl http://{ip}/        # the demo Service"),
        _ => println!("  {} get services", kubectl.display()),
    }
    let profile = if state.contains("profile=debug") { "debug" } else { "release" };
    let coxctl = bin_dir(profile).join("coxctl");
    if ebpf {
        println!("  {} dataplane --agent http://{} services   # what node-1's eBPF maps hold", coxctl.display(), layout.agent_addr(1));
    } else {
        println!("  {} cluster status", coxctl.display());
    }
    println!("Logs: {}   Stop: cargo xtask down", layout.log_dir().display());
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn link_exists(name: &str) -> bool {
    probe(Command::new("ip").args(["link", "show", "dev", name])).is_some()
}

fn sysctl_in(layout: &Layout, k: u8, key: &str, value: &str) -> Result<()> {
    run_quiet(in_node(layout, k, "sysctl").args(["-q", "-w", &format!("{key}={value}")])).map(|_| ())
}

fn create_topology(layout: &Layout) -> Result<()> {
    // The host forwards between the node bridge and its pods; its previous
    // setting comes back with `down`.
    let saved = layout.pid_dir().join("host-ip-forward");
    if !saved.exists() {
        let current = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_else(|_| "0".into());
        std::fs::write(&saved, current.trim())?;
    }
    sysctl_in(layout, 1, "net.ipv4.ip_forward", "1")?;

    let bridge = layout.node_bridge();
    if !link_exists(&bridge) {
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", layout.node_ip(1)), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
    }
    // Forwarded traffic from our bridges uses the main table without its
    // default route, and nothing else: it cannot leave through the uplink.
    let pref = layout.rule_pref();
    for (i, iface) in [bridge.clone(), layout.pod_bridge()].iter().enumerate() {
        let p = pref + 2 * i as u32;
        let _ = probe(Command::new("ip").args(["rule", "del", "pref", &p.to_string()]));
        let _ = probe(Command::new("ip").args(["rule", "del", "pref", &(p + 1).to_string()]));
        ip(&["rule", "add", "pref", &p.to_string(), "iif", iface, "lookup", "main", "suppress_prefixlength", "0"])?;
        ip(&["rule", "add", "pref", &(p + 1).to_string(), "iif", iface, "unreachable"])?;
    }
    for k in 2..=layout.nodes {
        let ns = layout.netns(k);
        if !netns_exists(&ns) {
            ip(&["netns", "add", &ns])?;
        }
        let veth = layout.host_veth(k);
        if !link_exists(&veth) {
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "uplink0", "netns", &ns])?;
            ip(&["link", "set", &veth, "master", &bridge])?;
            ip(&["link", "set", &veth, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", layout.node_ip(k)), "dev", "uplink0"])?;
            ip(&["-n", &ns, "link", "set", "uplink0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        for (key, value) in [("net.ipv4.ip_forward", "1"), ("net.ipv4.conf.all.rp_filter", "0"), ("net.ipv4.conf.default.rp_filter", "0")] {
            sysctl_in(layout, k, key, value)?;
        }
    }
    // Routes: every node reaches every other node's pods through that node;
    // the Service CIDR leads into the node bridge, never to a default route.
    for k in 1..=layout.nodes {
        let mut routes = vec![];
        for j in 1..=layout.nodes {
            if j != k {
                routes.push(vec!["route".to_owned(), "replace".into(), layout.pod_cidr(j), "via".into(), layout.node_ip(j), "dev".into(), layout.uplink(k)]);
            }
        }
        routes.push(vec!["route".into(), "replace".into(), layout.service_cidr(), "dev".into(), layout.uplink(k)]);
        for route in routes {
            let mut args: Vec<&str> = vec![];
            let ns = layout.netns(k);
            if k > 1 {
                args.extend(["-n", ns.as_str()]);
            }
            args.extend(route.iter().map(String::as_str));
            ip(&args)?;
        }
    }
    Ok(())
}

fn start_etcd(layout: &Layout) -> Result<String> {
    step("up", "starting a 3-member etcd cluster");
    let cluster: Vec<String> = (0..3)
        .map(|m| format!("m{m}=http://127.0.0.1:{}", layout.etcd_peer_port(m)))
        .collect();
    for m in 0..3u8 {
        let dir = layout.data.join(format!("etcd/m{m}"));
        std::fs::create_dir_all(&dir)?;
        let client = format!("http://127.0.0.1:{}", layout.etcd_client_port(m));
        let peer = format!("http://127.0.0.1:{}", layout.etcd_peer_port(m));
        spawn(
            layout,
            &format!("etcd-{m}"),
            Command::new("etcd")
                .args(["--name", &format!("m{m}"), "--data-dir"])
                .arg(&dir)
                .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &format!("{}-etcd", layout.tag())]),
        )?;
    }
    for m in 0..3u8 {
        let addr = format!("127.0.0.1:{}", layout.etcd_client_port(m));
        wait(layout, &format!("etcd-{m}"), "etcd member healthy", Duration::from_secs(60), || {
            http_get(&addr, "/health").is_ok_and(|b| b.contains("true"))
        })?;
    }
    Ok((0..3).map(|m| format!("http://127.0.0.1:{}", layout.etcd_client_port(m))).collect::<Vec<_>>().join(","))
}

fn start_control_plane(layout: &Layout, bins: &Path, etcd: Option<&str>, grace: &str) -> Result<()> {
    step("up", format!("starting the control plane on https://{} (log: {})", layout.api_addr(), layout.log_dir().join("control-plane.log").display()));
    let _ = std::fs::remove_file(layout.kubeconfig());
    let mut cmd = Command::new(bins.join("coxswain-control-plane"));
    cmd.arg("--data-dir")
        .arg(&layout.data)
        .args(["--listen", &layout.api_addr()])
        .args(["--service-cidr", &layout.service_cidr()])
        .args(["--cluster-cidr", &layout.cluster_cidr()])
        .args(["--components-metrics-listen", &format!("{}:10257", layout.node_ip(1))])
        .args(["--node-monitor-grace-period", grace]);
    if let Some(endpoints) = etcd {
        cmd.args(["--etcd-endpoints", endpoints]);
    }
    spawn(layout, "control-plane", &mut cmd)?;
    wait(layout, "control-plane", "the API server ready", Duration::from_secs(60), || {
        layout.kubeconfig().exists()
            && probe(kubectl(layout).args(["get", "--raw", "/readyz"])).is_some_and(|b| b.trim() == "ok")
    })
}

fn node_kubeconfig_path(layout: &Layout, k: u8) -> PathBuf {
    layout.node_dir(k).join("kubelet.kubeconfig")
}

/// Gives node `k` its own identity: a kubeconfig with a client certificate for
/// `system:node:<name>` in `system:nodes`, signed by the cluster CA.
fn write_node_kubeconfig(layout: &Layout, k: u8, bins: &Path) -> Result<()> {
    let path = node_kubeconfig_path(layout, k);
    std::fs::create_dir_all(layout.node_dir(k))?;
    let out = Command::new(bins.join("coxswain-control-plane"))
        .arg("--data-dir")
        .arg(&layout.data)
        .arg("kubeconfig")
        .args(["--user", &format!("system:node:{}", layout.node_name(k))])
        .args(["--group", "system:nodes"])
        .args(["--server", &format!("https://{}", layout.api_addr())])
        .arg("--output")
        .arg(&path)
        .output()
        .context("run coxswain-control-plane kubeconfig")?;
    if !out.status.success() {
        bail!("issuing {}'s credentials failed: {}", layout.node_name(k), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The node agent's command for node `k`; with `join` (`join URL --token T
/// --discovery-token-ca-cert-hash H`), the agent first joins the cluster.
fn agent_command(layout: &Layout, k: u8, bins: &Path, join: Option<&[String]>) -> Command {
    let node = layout.node_dir(k);
    let mut cmd = in_node(layout, k, bins.join("coxswain-node-agent"));
    if let Some(join) = join {
        cmd.args(join);
    }
    cmd.arg("--kubelet")
        .arg("--kubeconfig")
        .arg(node_kubeconfig_path(layout, k))
        .args(["--node-name", &layout.node_name(k), "--node-ip", &layout.node_ip(k)])
        .args(["--pod-cidr", &layout.pod_cidr(k), "--cni-bridge", &layout.pod_bridge()])
        // Rule modes tell pod traffic apart by it (kube-proxy's --cluster-cidr).
        .args(["--cluster-cidr", &layout.cluster_cidr()])
        .arg("--kubelet-root-dir")
        .arg(node.join("kubelet"))
        .arg("--containerd-root")
        .arg(node.join("containerd"))
        .arg("--containerd-state")
        .arg(layout.run_dir().join(layout.node_name(k)))
        .arg("--pin-dir")
        .arg(layout.pin_dir(k));
    cmd
}

/// A bootstrap token for the extra nodes: `coxctl token create`'s join command, as
/// arguments after the agent's program name.
fn join_arguments(layout: &Layout, bins: &Path) -> Result<Vec<String>> {
    let out = Command::new(bins.join("coxctl"))
        .arg("--kubeconfig")
        .arg(layout.kubeconfig())
        .args(["token", "create", "--ttl", "1h", "--description", "cargo xtask up"])
        .output()
        .context("run coxctl token create")?;
    if !out.status.success() {
        bail!("coxctl token create failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    match words.first().map(String::as_str) {
        Some("coxswain-node-agent") if words.get(1).map(String::as_str) == Some("join") => Ok(words[1..].to_vec()),
        _ => bail!("coxctl token create printed {line:?}, not a join command"),
    }
}

/// Starts node `k`'s agent: node 1 with credentials issued from the CA directly (it is
/// the control plane's machine), the others by joining with a bootstrap token.
fn start_agent(layout: &Layout, k: u8, bins: &Path, object: &Path, mode: ProxyMode, join: Option<&[String]>) -> Result<()> {
    let name = format!("agent-{k}");
    let how = if join.is_some() { ", joining with a bootstrap token" } else { "" };
    step("up", format!("starting {} ({}, pods {}) with containerd{how} (log: {})", layout.node_name(k), layout.node_ip(k), layout.pod_cidr(k), layout.log_dir().join(format!("{name}.log")).display()));
    if join.is_none() {
        write_node_kubeconfig(layout, k, bins)?;
    }
    let mut cmd = agent_command(layout, k, bins, join);
    cmd.arg("--image-preload-dir")
        .arg(layout.data.join("images"))
        .args(["--metrics-addr", &layout.agent_addr(k), "--proxy-mode", mode.as_str()])
        .env("COXSWAIN_EBPF_OBJECT", object)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
    if mode == ProxyMode::Ebpf {
        cmd.args(["--pod-bridge", &layout.pod_bridge(), "--uplink-iface", &layout.uplink(k)])
            .args(["--socket-lb-cgroup", &cgroup2_root()?]);
    }
    spawn(layout, &name, &mut cmd)?;
    Ok(())
}

fn ready_nodes(layout: &Layout) -> usize {
    let Some(out) = probe(kubectl(layout).args([
        "get",
        "nodes",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#,
    ])) else {
        return 0;
    };
    out.lines().filter(|l| l.ends_with("=True")).count()
}

/// Stops everything `up` started and removes what it created; checks that
/// nothing is left.
pub fn down(opts: &DownOptions) -> Result<()> {
    if !is_root() {
        bail!("`cargo xtask down` removes network namespaces and eBPF pins: run it as root");
    }
    let layout = read_state(&opts.data_dir).unwrap_or_else(|| Layout::new(0, 8, &opts.data_dir));
    let bins = ["release", "debug"]
        .iter()
        .map(|p| bin_dir(p))
        .find(|d| d.join("coxswain-node-agent").exists());

    for k in 1..=layout.nodes {
        stop(&layout, &format!("agent-{k}"), Duration::from_secs(20));
    }
    // Pods: every sandbox removed through CRI, as `kubeadm reset` does.
    if let Some(bins) = &bins {
        for k in 1..=layout.nodes {
            if !layout.node_dir(k).join("containerd").exists() || (k > 1 && !netns_exists(&layout.netns(k))) {
                continue;
            }
            step("down", format!("removing the pods of {}", layout.node_name(k)));
            let out = agent_command(&layout, k, bins, None)
                .arg("--reset")
                .stdin(Stdio::null())
                .output()
                .context("failed to run the node agent's reset")?;
            if !out.status.success() {
                println!("    reset of {} failed: {}", layout.node_name(k), String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default());
            }
        }
    }
    stop(&layout, "control-plane", Duration::from_secs(10));
    for m in 0..3 {
        stop(&layout, &format!("etcd-{m}"), Duration::from_secs(10));
    }
    // Anything still pointing at our directories (container shims).
    // Not the data directory itself: our own command line (and cargo's)
    // mentions it.
    let markers = [layout.data.join("nodes").display().to_string(), layout.run_dir().display().to_string()];
    let killed = kill_matching(&markers);
    if killed > 0 {
        step("down", format!("killed {killed} leftover process(es)"));
    }
    unmount_under(&markers);

    step("down", "removing namespaces, links, routes and rules");
    for k in 2..=8 {
        let ns = layout.netns(k);
        if netns_exists(&ns) {
            ip(&["netns", "del", &ns])?;
        }
    }
    for link in [layout.node_bridge(), layout.pod_bridge()] {
        if link_exists(&link) {
            ip(&["link", "del", &link])?;
        }
    }
    for k in 2..=8 {
        if link_exists(&layout.host_veth(k)) {
            ip(&["link", "del", &layout.host_veth(k)])?;
        }
    }
    for p in layout.rule_pref()..layout.rule_pref() + 4 {
        while probe(Command::new("ip").args(["rule", "del", "pref", &p.to_string()])).is_some() {}
    }
    let saved = layout.pid_dir().join("host-ip-forward");
    if let Ok(value) = std::fs::read_to_string(&saved) {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", value.trim())?;
        std::fs::remove_file(&saved)?;
    }
    for k in 1..=8 {
        let pins = layout.pin_dir(k);
        if pins.exists() {
            std::fs::remove_dir_all(&pins).with_context(|| format!("failed to remove {}", pins.display()))?;
        }
    }
    let _ = std::fs::remove_dir_all(layout.run_dir());
    for name in components(&layout) {
        let _ = std::fs::remove_file(layout.pid_dir().join(format!("{name}.pid")));
    }
    let leftovers = leftovers(&layout, &markers);
    if opts.purge && opts.data_dir.exists() {
        step("down", format!("removing {}", opts.data_dir.display()));
        std::fs::remove_dir_all(&opts.data_dir)?;
    }
    if !leftovers.is_empty() {
        bail!("`down` left things behind:\n  {}", leftovers.join("\n  "));
    }
    step("down", "done: nothing of the cluster is left");
    Ok(())
}

fn stop(layout: &Layout, name: &str, grace: Duration) {
    let Some(pid) = running(layout, name) else { return };
    step("down", format!("stopping {name} (pid {pid})"));
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && alive(pid.as_raw()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid.as_raw()) {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// Processes whose command line mentions one of `markers`.
fn matching_processes(markers: &[String]) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if markers.iter().any(|m| cmdline.contains(m.as_str())) {
            found.push((pid, cmdline));
        }
    }
    found
}

fn kill_matching(markers: &[String]) -> usize {
    let procs = matching_processes(markers);
    for (pid, _) in &procs {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
    }
    if !procs.is_empty() {
        std::thread::sleep(Duration::from_millis(300));
    }
    procs.len()
}

fn mounts_under(markers: &[String]) -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut ours: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| markers.iter().any(|root| m.starts_with(root.as_str())))
        .map(str::to_owned)
        .collect();
    ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
    ours
}

fn unmount_under(markers: &[String]) {
    for m in mounts_under(markers) {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// What `down` should have removed and did not.
fn leftovers(layout: &Layout, markers: &[String]) -> Vec<String> {
    let mut left = vec![];
    let tag = format!("{}-", layout.tag());
    for entry in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&tag) {
            left.push(format!("network namespace {name}"));
        }
    }
    if let Some(links) = probe(Command::new("ip").args(["-o", "link", "show"])) {
        for line in links.lines() {
            let name = line.split(": ").nth(1).unwrap_or_default().split('@').next().unwrap_or_default();
            if name.starts_with(&tag) {
                left.push(format!("link {name}"));
            }
        }
    }
    if let Some(rules) = probe(Command::new("ip").args(["rule", "show"])) {
        for line in rules.lines() {
            if line.contains(&layout.node_bridge()) || line.contains(&layout.pod_bridge()) {
                left.push(format!("policy rule {line}"));
            }
        }
    }
    if let Some(routes) = probe(Command::new("ip").args(["route", "show"])) {
        for line in routes.lines() {
            if line.starts_with(&layout.service_cidr()) || line.starts_with(&format!("10.{}.", 244 + layout.instance)) {
                left.push(format!("route {line}"));
            }
        }
    }
    for k in 1..=8 {
        if layout.pin_dir(k).exists() {
            left.push(format!("bpffs pins {}", layout.pin_dir(k).display()));
        }
    }
    for (pid, cmdline) in matching_processes(markers) {
        left.push(format!("process {pid}: {cmdline}"));
    }
    for m in mounts_under(markers) {
        left.push(format!("mount {m}"));
    }
    let rule_mode = std::fs::read_to_string(layout.state_file()).is_ok_and(|s| !s.contains("proxy_mode=ebpf"));
    if let Some(rules) = probe(&mut Command::new("iptables-save")).filter(|_| rule_mode) {
        for line in rules.lines() {
            if line.starts_with(":COX-") {
                left.push(format!("iptables chain {line}"));
            }
        }
    }
    if rule_mode && probe(Command::new("nft").args(["list", "table", "ip", "coxswain"])).is_some() {
        left.push("nftables table ip coxswain".into());
    }
    left
}
