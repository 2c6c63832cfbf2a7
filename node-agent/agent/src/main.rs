//! `coxswain-node-agent`: loads Coxswain's eBPF dataplane on a node and
//! serves its counters as Prometheus metrics.
//!
//! Today it attaches the per-interface packet counters (tc ingress/egress and
//! XDP) to the interfaces it is given; the service proxy and the kubelet grow
//! here. It never touches an interface it was not named.

mod api;
mod join;
mod kubelet_main;
mod conntrack_gc;
mod metrics;
mod pod_links;
mod proxy_loop;
mod rules;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use coxswain_dataplane::{Dataplane, LoadOptions, TcDirection, XdpMode, locate_object};
use tracing::info;

/// Coxswain's node agent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Interface to attach the tc counters to (ingress and egress); repeat
    /// for several. Names resolve in the agent's network namespace.
    #[arg(long = "iface", value_name = "NAME")]
    ifaces: Vec<String>,

    /// Interface to attach the XDP program to; repeat for several.
    #[arg(long = "xdp-iface", value_name = "NAME")]
    xdp_ifaces: Vec<String>,

    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    xdp_mode: XdpModeArg,

    /// The eBPF object to load (default: `$COXSWAIN_EBPF_OBJECT`, then the
    /// output of `cargo xtask build-ebpf`).
    #[arg(long, value_name = "PATH")]
    bpf_object: Option<PathBuf>,

    /// bpffs directory for pinned maps and links (kept across restarts).
    #[arg(long, value_name = "DIR", default_value = coxswain_dataplane::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,

    /// Address of the metrics and health endpoint.
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics_addr: SocketAddr,

    /// Interface where pod or client traffic enters the node's datapath
    /// (a pod bridge, a pod veth, the uplink): the Service program is
    /// attached to its tc ingress. Repeat for several.
    #[arg(long = "service-iface", value_name = "NAME")]
    service_ifaces: Vec<String>,

    /// The bridge pods are attached to (the kubelet's `--cni-bridge`): the
    /// Service program is attached to the tc ingress of each of its ports,
    /// the pods' host-side veths, as they come and go.
    #[arg(long, value_name = "NAME")]
    pod_bridge: Option<String>,

    /// The node's uplink (the interface other machines reach it through):
    /// NodePort, externalIPs and load-balancer IPs are served here. Only
    /// the interface named is touched.
    #[arg(long = "uplink-iface", value_name = "NAME")]
    uplink_ifaces: Vec<String>,

    /// NodePort acceleration on the uplinks: external flows translated at
    /// XDP, before the kernel builds an skb, and those to other nodes sent
    /// back out at once (`native`: in the driver; `generic`: in the stack,
    /// works everywhere; `disabled`: tc only). Everything XDP passes on is
    /// handled by the tc program as without it.
    #[arg(long, value_enum, default_value_t = Acceleration::Disabled)]
    nodeport_acceleration: Acceleration,

    /// cgroup v2 directory whose processes get socket-level Service load
    /// balancing (the root cgroup covers every host process).
    #[arg(long, value_name = "DIR")]
    socket_lb_cgroup: Option<PathBuf>,

    /// How Services are load-balanced: `ebpf` (hash-map lookups in the
    /// kernel programs), or kube-proxy-shaped `iptables` / `nftables` rules
    /// in our own chains, for comparison on the same cluster.
    #[arg(long, value_enum, default_value_t = ProxyMode::Ebpf)]
    proxy_mode: ProxyMode,

    /// The cluster's pod network (kube-proxy's `--cluster-cidr`), for the
    /// `iptables` and `nftables` proxy modes: pods reach NodePorts and
    /// external IPs under `externalTrafficPolicy: Local` at every endpoint,
    /// and ClusterIP traffic from outside it is masqueraded. Without it, as
    /// kube-proxy without the flag: pods count as outside clients there.
    #[arg(long, value_name = "CIDR")]
    cluster_cidr: Option<coxswain_proxy::iptables::Ipv4Cidr>,

    /// How new flows pick a backend: `random` (as kube-proxy) or `maglev`
    /// (consistent hashing: every node picks the same backend for a flow,
    /// and a backend change moves few flows). A Service overrides it with
    /// the `coxswain.io/lb-algorithm` annotation. eBPF mode only.
    #[arg(long, value_name = "ALGORITHM", default_value_t = coxswain_proxy::LbAlgorithm::Random)]
    lb_algorithm: coxswain_proxy::LbAlgorithm,

    /// Longest pause between conntrack collection passes (the collector
    /// shortens it while many flows close).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    conntrack_gc_interval: u64,

    /// Kubeconfig of the API server to watch for Services, EndpointSlices
    /// and this Node. Without it (and without $KUBECONFIG), the service
    /// proxy does not run.
    #[arg(long, value_name = "PATH", env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,

    /// This node's name, as in its Node object.
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(flatten)]
    kubelet: kubelet_main::KubeletArgs,
}

/// `--proxy-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ProxyMode {
    Ebpf,
    Iptables,
    Nftables,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum XdpModeArg {
    /// Let the kernel choose (native if the driver supports it).
    Auto,
    /// Native (driver) XDP.
    Driver,
    /// Generic (skb) XDP, works everywhere, slower.
    Skb,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Acceleration {
    /// tc only.
    Disabled,
    /// XDP in the driver.
    Native,
    /// XDP in the network stack (generic, skb mode).
    Generic,
}

impl From<XdpModeArg> for XdpMode {
    fn from(mode: XdpModeArg) -> Self {
        match mode {
            XdpModeArg::Auto => XdpMode::Default,
            XdpModeArg::Driver => XdpMode::Driver,
            XdpModeArg::Skb => XdpMode::Skb,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    let args = if argv.get(1).map(String::as_str) == Some("join") {
        let join_args = <join::JoinArgs as Parser>::parse_from(&argv[1..]);
        let (agent_argv, kubeconfig) = join::agent_argv(&join_args);
        let args = Args::parse_from(agent_argv);
        init_tracing(args.log_format);
        let node_name = args.node_name.clone().unwrap_or_else(hostname);
        join::join(&join_args, &node_name, &kubeconfig).await?;
        if join_args.join_only {
            return Ok(());
        }
        args
    } else {
        let args = Args::parse();
        init_tracing(args.log_format);
        args
    };

    let node_name = args.node_name.clone().unwrap_or_else(hostname);
    if args.kubelet.reset {
        kubelet_main::reset(&args.kubelet, &node_name).await?;
        info!("reset done: no pod sandbox left");
        return Ok(());
    }
    // The kubelet asks for a pod interface sync before a pod's containers
    // start; the dataplane loads after the kubelet, hence the late binding.
    let pod_links: Arc<std::sync::OnceLock<(Arc<pod_links::PodLinks>, PathBuf)>> = Arc::default();
    let hook = args.pod_bridge.is_some().then(|| {
        let pod_links = pod_links.clone();
        coxswain_kubelet::SandboxNetworkHook(Arc::new(move || {
            if let Some((links, pin_dir)) = pod_links.get()
                && let Err(e) = links.sync(pin_dir)
            {
                tracing::warn!(error = %format!("{e:#}"), "pod interface sync failed");
            }
        }))
    });
    let kubelet = kubelet_main::start(&args.kubelet, args.kubeconfig.as_ref(), &node_name, hook).await?;
    if args.ifaces.is_empty()
        && args.xdp_ifaces.is_empty()
        && args.service_ifaces.is_empty()
        && args.uplink_ifaces.is_empty()
        && args.pod_bridge.is_none()
        && args.socket_lb_cgroup.is_none()
        // Rule modes need no interface, only the API server.
        && (args.proxy_mode == ProxyMode::Ebpf || args.kubeconfig.is_none())
    {
        if let Some(kubelet) = kubelet {
            return kubelet_main::run_alone(kubelet, args.metrics_addr, shutdown_signal()).await;
        }
        bail!(
            "nothing to run: give --kubelet, or name an interface (--iface, --xdp-iface, --service-iface, --uplink-iface, --pod-bridge) or a cgroup (--socket-lb-cgroup) to attach to"
        );
    }
    let object = locate_object(args.bpf_object.as_deref())?;
    let options = LoadOptions {
        pin_dir: args.pin_dir.clone(),
    };
    let mut dataplane = Dataplane::load_file_with(&object, &options)?;
    for iface in &args.ifaces {
        for direction in [TcDirection::Ingress, TcDirection::Egress] {
            dataplane
                .attach_tc(iface, direction)
                .with_context(|| format!("--iface {iface}"))?;
        }
    }
    for iface in &args.xdp_ifaces {
        dataplane
            .attach_xdp(iface, args.xdp_mode.into())
            .with_context(|| format!("--xdp-iface {iface}"))?;
    }
    for iface in &args.service_ifaces {
        dataplane
            .attach_service_tc(iface)
            .with_context(|| format!("--service-iface {iface}"))?;
    }
    for iface in &args.uplink_ifaces {
        dataplane
            .attach_nodeport_tc(iface)
            .with_context(|| format!("--uplink-iface {iface}"))?;
        let mode = match args.nodeport_acceleration {
            Acceleration::Disabled => None,
            Acceleration::Native => Some(XdpMode::Driver),
            Acceleration::Generic => Some(XdpMode::Skb),
        };
        match mode {
            Some(mode) => dataplane
                .attach_nodeport_xdp(iface, mode)
                .with_context(|| format!("--nodeport-acceleration on --uplink-iface {iface}"))?,
            // A previous agent's acceleration goes with its pin.
            None => dataplane
                .detach_nodeport_xdp(iface)
                .with_context(|| format!("--uplink-iface {iface}"))?,
        }
    }
    if let Some(cgroup) = &args.socket_lb_cgroup {
        dataplane
            .attach_socket_lb(cgroup)
            .with_context(|| format!("--socket-lb-cgroup {}", cgroup.display()))?;
    }
    let dataplane = Arc::new(Mutex::new(dataplane));
    if let Some(bridge) = &args.pod_bridge {
        let links = Arc::new(pod_links::PodLinks::new(
            bridge.clone(),
            args.service_ifaces.iter().cloned(),
            dataplane.clone(),
        ));
        let attached = links.sync(&args.pin_dir)?;
        info!(bridge = %bridge, ports = attached, "following the pod bridge's ports");
        let _ = pod_links.set((links.clone(), args.pin_dir.clone()));
        links.spawn(args.pin_dir.clone())?;
    }

    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("failed to listen on --metrics-addr {}", args.metrics_addr))?;
    info!(addr = %args.metrics_addr, "serving /metrics, /healthz and /dataplane/counters");
    let (metrics_routes, proxy_metrics) = metrics::router_with(dataplane.clone(), |registry| {
        if let Some(kubelet) = &kubelet {
            kubelet.register_metrics(registry);
        }
    });
    let stale_flows = conntrack_gc::spawn(
        args.pin_dir.clone(),
        std::time::Duration::from_secs(args.conntrack_gc_interval.max(1)),
        proxy_metrics.clone(),
    );
    let (names_tx, names_rx) = tokio::sync::mpsc::channel(8);
    let proxy = match args.kubeconfig.clone() {
        Some(kubeconfig) => {
            let config = proxy_loop::ProxyConfig {
                kubeconfig: Some(kubeconfig),
                node_name: args.node_name.clone().unwrap_or_else(hostname),
                lb_algorithm: args.lb_algorithm,
                stale_flows: Some(stale_flows),
                cluster_cidr: args.cluster_cidr,
            };
            let proxy_target = match args.proxy_mode {
                ProxyMode::Ebpf => proxy_loop::ProxyTarget::Ebpf(dataplane.clone()),
                ProxyMode::Iptables => proxy_loop::ProxyTarget::Rules(rules::RuleMode::Iptables),
                ProxyMode::Nftables => proxy_loop::ProxyTarget::Rules(rules::RuleMode::Nftables),
            };
            Some(tokio::spawn(async move {
                proxy_loop::run(config, proxy_target, proxy_metrics, names_rx).await
            }))
        }
        None => {
            info!("no --kubeconfig: the service proxy is off");
            None
        }
    };
    let app = metrics_routes.merge(api::router(api::ApiState {
        dataplane: dataplane.clone(),
        names: proxy.is_some().then_some(names_tx),
    }))
    .merge(kubelet_main::routes(kubelet.as_ref().map(|k| {
        Arc::new(kubelet_main::ImportHandle {
            importer: k.image_importer(),
        })
    })));
    let kubelet = kubelet.map(kubelet_main::spawn);
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal());
    match proxy {
        Some(proxy) => tokio::select! {
            served = server => served.context("metrics server failed")?,
            ended = proxy => ended.context("service proxy panicked")?.context("service proxy failed")?,
        },
        None => server.await.context("metrics server failed")?,
    }
    if let Some(kubelet) = kubelet {
        kubelet.stop().await?;
    }
    if args.proxy_mode != ProxyMode::Ebpf {
        // As `kube-proxy --cleanup`: leave no rule of ours behind.
        match rules::cleanup() {
            Ok(()) => info!("netfilter rules removed"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "could not remove the netfilter rules"),
        }
    }
    info!("shutting down; programs detach as the agent exits");
    drop(dataplane);
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        // netlink-packet-route warns about every attribute newer than itself.
        .add_directive("netlink_packet_route=error".parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
