//! The whole service path through a real API server: the control plane
//! binary stores a Service and an EndpointSlice applied with the real
//! kubectl, the node agent binary watches them (kube-runtime) and programs
//! the kernel, and a client's connections to the ClusterIP follow every
//! change made through the API.

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use coxswain_tests::{
    fixture::{Fixture, ask, connect},
    workspace_bin,
};

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A command run in the node's network namespace (`nsenter`, which keeps
/// the mount namespace: the agent must see the test's bpffs pins).
fn in_node(fx: &Fixture, program: &Path) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", fx.topo.node.name()))
        .arg(program);
    cmd
}

fn kubectl(fx: &Fixture, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let venv = std::env::var("COXSWAIN_VENV").unwrap_or_else(|_| "/opt/coxswain/venv".into());
    let kubectl = Path::new(&venv).join("bin/kubectl");
    assert!(
        kubectl.exists(),
        "{} missing: run `cargo xtask setup`",
        kubectl.display()
    );
    let mut child = in_node(fx, &kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("kubectl output");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn slice(fx: &Fixture, hosts: &[usize]) -> String {
    let endpoints: Vec<_> = hosts
        .iter()
        .map(|i| serde_json::json!({"addresses": [fx.topo.hosts[*i].addr.to_string()], "conditions": {"ready": true}}))
        .collect();
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
    .to_string()
}

/// Waits until `n` fresh connections reach exactly `want`.
fn wait_for_backends(fx: &Fixture, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = BTreeSet::new();
    while Instant::now() < deadline {
        last = (0..30)
            .filter_map(|_| {
                let mut stream = connect(fx.client(), 80).ok()?;
                ask(&mut stream, "hi").ok()
            })
            .collect();
        if last == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("connections reached {last:?}, wanted {want:?}");
}

#[test]
fn services_applied_with_kubectl_reach_the_kernel_through_the_agent() {
    let mut fx = Fixture::new(214);
    let data = tempfile::tempdir().expect("tempdir");
    let _control_plane = Proc(
        in_node(&fx, &workspace_bin("coxswain-control-plane"))
            .arg("--data-dir")
            .arg(data.path())
            .args(["--listen", "127.0.0.1:16443"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the control plane"),
    );
    let kubeconfig = data.path().join("admin.kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !kubeconfig.exists() {
        assert!(
            Instant::now() < deadline,
            "the control plane did not write its kubeconfig"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let service = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    });
    kubectl(
        &fx,
        &kubeconfig,
        &["apply", "-f", "-"],
        Some(&service.to_string()),
    );
    kubectl(
        &fx,
        &kubeconfig,
        &["apply", "-f", "-"],
        Some(&slice(&fx, &[1, 2, 3])),
    );

    // The agent reuses the fixture's pinned maps and links.
    let _agent = Proc(
        in_node(&fx, &workspace_bin("coxswain-node-agent"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
                "--node-name",
                "node-a",
                "--service-iface",
                "h0",
                "--metrics-addr",
                "127.0.0.1:10250",
                "--pin-dir",
            ])
            .arg(fx.pins.path())
            .env(
                "COXSWAIN_EBPF_OBJECT",
                coxswain_dataplane::locate_object(None).unwrap(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the node agent"),
    );
    wait_for_backends(&fx, &["b1", "b2", "b3"]);

    // Scale down through the API: the kernel follows.
    kubectl(
        &fx,
        &kubeconfig,
        &["apply", "-f", "-"],
        Some(&slice(&fx, &[2])),
    );
    wait_for_backends(&fx, &["b2"]);

    // Delete the Service: its address is no longer translated (the API server's own
    // `kubernetes` Service stays).
    kubectl(&fx, &kubeconfig, &["delete", "service", "web"], None);
    let vip = u32::from(coxswain_tests::fixture::VIP).to_be();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        use coxswain_dataplane::ServiceMaps;
        let dump = fx.dataplane.service_maps().dump().expect("dump");
        if dump.services.keys().all(|k| k.addr != vip) {
            let kubernetes = u32::from(std::net::Ipv4Addr::new(10, 96, 0, 1)).to_be();
            assert!(dump.services.keys().all(|k| k.addr == kubernetes), "{dump:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "maps still hold the Service: {dump:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
