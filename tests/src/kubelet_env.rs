//! A one-node cluster for kubelet tests: the control plane in one network
//! namespace, the node agent (kubelet only, with its own node identity) with
//! its own containerd in another, joined by a veth pair with private addresses. The CNI bridge,
//! pod veths and portmap rules all live in the node's namespace and vanish
//! with it. Images are built from busybox-static and preloaded.
//!
//! On drop (even after a failed assertion): every sandbox is stopped and
//! removed through CRI, the agent and its containerd are stopped, leftover
//! shims killed, mounts under the data directory undone, the namespaces
//! deleted.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{netns::VethPair, require_root};

/// A workspace binary: next to the running executable (a benchmark binary in
/// `target/<profile>/`), or where test executables find them.
fn binary(name: &str) -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)));
    match beside {
        Some(path) if path.exists() => path,
        _ => crate::workspace_bin(name),
    }
}

/// The busybox image every test pod uses (preloaded).
pub const BUSYBOX: &str = "coxswain.local/busybox:test";

/// Options of [`KubeletEnv::start`].
#[derive(Debug, Clone, Default)]
pub struct EnvOptions {
    /// Give the agent `--pod-cidr` (otherwise the test patches the Node).
    pub pod_cidr_flag: bool,
}

/// Waits until `ready` holds (polled every 100 ms); panics with `what` and a log after `timeout`.
fn wait_until(env: &KubeletEnv, what: &str, timeout: Duration, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}\n{}", env.log("control-plane.log"));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The cluster of one test.
#[derive(Debug)]
pub struct KubeletEnv {
    /// The namespaces: `a` runs the control plane and kubectl, `b` is the node.
    pub veth: VethPair,
    /// Data of everything (deleted on drop).
    pub dir: tempfile::TempDir,
    /// kubectl's kubeconfig (the cluster admin).
    pub kubeconfig: PathBuf,
    /// The node's own kubeconfig (`system:node:<name>` in `system:nodes`), as `xtask up`
    /// gives node 1; its serving certificate is kept beside it.
    pub node_kubeconfig: PathBuf,
    /// The Node's name.
    pub node_name: String,
    /// The node's pod CIDR (`10.237.<index>.0/24`).
    pub pod_cidr: String,
    control_plane: Option<Child>,
    agent: Option<Child>,
    agent_runs: u32,
    options: EnvOptions,
}

fn kubectl_path() -> PathBuf {
    let venv = std::env::var("COXSWAIN_VENV").unwrap_or_else(|_| "/opt/coxswain/venv".into());
    let kubectl = Path::new(&venv).join("bin/kubectl");
    assert!(kubectl.exists(), "{} missing: run `cargo xtask setup`", kubectl.display());
    kubectl
}

fn stop(child: &mut Child, grace: Duration) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl KubeletEnv {
    /// Starts the control plane and the agent; `index` (1..=200) keeps
    /// addresses apart from other tests running at the same time.
    pub fn start(index: u8, options: EnvOptions) -> KubeletEnv {
        require_root();
        for bin in ["containerd", "ctr", "runc", "/usr/lib/cni/bridge", "/bin/busybox"] {
            let found = Path::new(bin).exists()
                || std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).exists()));
            assert!(found, "{bin} is missing: run `cargo xtask setup`");
        }
        let veth = VethPair::create(&format!("10.236.{index}")).expect("create the node's veth pair");
        let dir = tempfile::Builder::new().prefix("cox-kubelet").tempdir().expect("tempdir");
        let images = dir.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        let spec = coxswain_oci_image::ImageSpec::busybox(BUSYBOX);
        coxswain_oci_image::write_archive(&spec, &images.join("busybox.tar")).expect("build the busybox image");
        std::fs::create_dir_all(dir.path().join("manifests")).unwrap();

        let cp_data = dir.path().join("control-plane");
        let log = std::fs::File::create(dir.path().join("control-plane.log")).unwrap();
        let control_plane = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", veth.a.name()))
            .arg(binary("coxswain-control-plane"))
            .arg("--data-dir")
            .arg(&cp_data)
            .args(["--listen", &format!("{}:6443", veth.a_addr)])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the control plane");
        let kubeconfig = cp_data.join("admin.kubeconfig");
        let node_kubeconfig = dir.path().join("node/kubelet.kubeconfig");
        let mut env = KubeletEnv {
            node_kubeconfig,
            node_name: format!("node-{}-{index}", std::process::id() % 100_000),
            pod_cidr: format!("10.237.{index}.0/24"),
            veth,
            dir,
            kubeconfig,
            control_plane: Some(control_plane),
            agent: None,
            agent_runs: 0,
            options,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !env.kubeconfig.exists() {
            assert!(Instant::now() < deadline, "the control plane did not start: {}", env.log("control-plane.log"));
            std::thread::sleep(Duration::from_millis(50));
        }
        env.issue_node_identity();
        // Pods are admitted once their namespace has its default ServiceAccount, which the
        // controller-manager creates shortly after start (upstream's e2e framework waits too).
        wait_until(&env, "the default ServiceAccount exists", Duration::from_secs(30), || {
            env.kubectl_raw(&["get", "serviceaccount", "default"], None).status.success()
        });
        env.start_agent();
        env
    }

    /// The cluster CA certificate (PEM).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("control-plane/pki/ca.crt")).expect("the cluster CA")
    }

    /// A kubeconfig (written in the data directory) that authenticates with a bearer `token`.
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        use std::fmt::Write as _;
        let ca = self.dir.path().join("control-plane/pki/ca.crt");
        let mut text = String::new();
        let _ = write!(
            text,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{}:6443\n    certificate-authority: {}\n\
             users:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
            self.veth.a_addr,
            ca.display()
        );
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        std::fs::write(&path, text).expect("write a token kubeconfig");
        path
    }

    /// Runs kubectl with another kubeconfig (in the control plane's namespace).
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.veth.a.name()))
            .arg(kubectl_path())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .env("HOME", self.dir.path())
            .output()
            .expect("run kubectl")
    }

    /// The control plane's data directory (its PKI is in `pki/`).
    pub fn control_plane_dir(&self) -> PathBuf {
        self.dir.path().join("control-plane")
    }

    /// The API server's URL.
    pub fn server_url(&self) -> String {
        format!("https://{}:6443", self.veth.a_addr)
    }

    /// A kubeconfig for `user` in `groups` with a certificate from the cluster CA.
    pub fn issue_kubeconfig(&self, user: &str, groups: &[&str], out: &Path) {
        let mut cmd = Command::new(binary("coxswain-control-plane"));
        cmd.arg("--data-dir").arg(self.control_plane_dir()).args(["kubeconfig", "--user", user]);
        for g in groups {
            cmd.args(["--group", g]);
        }
        let issued = cmd.args(["--server", &self.server_url()]).arg("--output").arg(out).output().expect("run coxswain-control-plane kubeconfig");
        assert!(issued.status.success(), "issuing {user}'s kubeconfig failed: {}", String::from_utf8_lossy(&issued.stderr));
    }

    fn issue_node_identity(&self) {
        std::fs::create_dir_all(self.node_kubeconfig.parent().unwrap()).unwrap();
        self.issue_kubeconfig(&format!("system:node:{}", self.node_name), &["system:nodes"], &self.node_kubeconfig);
    }

    /// Where the kubelet keeps its serving certificate and key.
    pub fn serving_cert_path(&self) -> PathBuf {
        self.node_kubeconfig.with_file_name(coxswain_kubelet::SERVING_FILE)
    }

    /// Waits until the kubelet serves its endpoint (it has a serving certificate and
    /// listens); returns the certificate file's contents.
    pub fn wait_serving(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr: std::net::SocketAddr = format!("{}:10250", self.veth.b_addr).parse().unwrap();
        loop {
            let listening = self.veth.a.run_in(|| Ok(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok())).unwrap_or(false);
            if listening && let Ok(text) = std::fs::read_to_string(self.serving_cert_path()) {
                return text;
            }
            assert!(Instant::now() < deadline, "the kubelet never served its endpoint\n{}", self.log("agent.log"));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A file of the data directory, for failure messages.
    pub fn log(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The kubelet's data directory.
    pub fn kubelet_root(&self) -> PathBuf {
        self.dir.path().join("kubelet")
    }

    /// The managed containerd's socket.
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.path().join("state/containerd.sock")
    }

    /// The static pod manifest directory.
    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    /// Starts the node agent (kubelet only) in the node's namespace.
    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "the agent runs already");
        self.agent_runs += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let mut cmd = self.in_node(&binary("coxswain-node-agent"));
        cmd.arg("--kubelet")
            .arg("--kubeconfig")
            .arg(&self.node_kubeconfig)
            .args(["--node-name", &self.node_name, "--node-ip", &self.veth.b_addr])
            .args(["--metrics-addr", "127.0.0.1:10249"])
            .arg("--kubelet-root-dir")
            .arg(self.kubelet_root())
            .arg("--containerd-root")
            .arg(self.dir.path().join("containerd"))
            .arg("--containerd-state")
            .arg(self.dir.path().join("state"))
            .arg("--image-preload-dir")
            .arg(self.dir.path().join("images"))
            .arg("--static-pod-dir")
            .arg(self.manifests())
            .env("RUST_LOG", "info,coxswain_kubelet=debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if self.options.pod_cidr_flag {
            cmd.args(["--pod-cidr", &self.pod_cidr]);
        }
        self.agent = Some(cmd.spawn().expect("start the node agent"));
    }

    /// Stops the agent with SIGTERM (pods keep running).
    pub fn stop_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            stop(&mut agent, Duration::from_secs(20));
        }
    }

    /// A command run in the node's network namespace.
    pub fn in_node(&self, program: &Path) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.veth.b.name())).arg(program);
        cmd
    }

    /// Runs kubectl (in the control plane's namespace) with `stdin`.
    pub fn kubectl_raw(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.veth.a.name()))
            .arg(kubectl_path())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        if let Some(input) = stdin {
            let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("kubectl output")
    }

    /// Runs kubectl on a terminal of its own (see [`PtyKubectl`]).
    pub fn kubectl_pty(&self, args: &[&str]) -> PtyKubectl {
        use std::io::Read;
        let size = nix::pty::Winsize { ws_row: 24, ws_col: 80, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = nix::pty::openpty(Some(&size), None).expect("open a pty");
        let slave_path = nix::unistd::ttyname(&pty.slave).expect("the pty's name");
        let stdio = |fd: &std::os::fd::OwnedFd| Stdio::from(fd.try_clone().expect("dup the pty"));
        // `setsid --ctty` makes the pty kubectl's controlling terminal, so resizes reach it.
        let child = Command::new("setsid")
            .arg("--ctty")
            .arg("nsenter")
            .arg(format!("--net=/run/netns/{}", self.veth.a.name()))
            .arg(kubectl_path())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("TERM", "xterm")
            .stdin(stdio(&pty.slave))
            .stdout(stdio(&pty.slave))
            .stderr(stdio(&pty.slave))
            .spawn()
            .expect("run kubectl on a pty");
        drop(pty.slave);
        let master = std::fs::File::from(pty.master);
        let mut read_end = master.try_clone().expect("dup the pty master");
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = output.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once every process holding the terminal has exited.
            while let Ok(n) = read_end.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap_or_else(|e| e.into_inner()).push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        PtyKubectl { child, master, slave_path, output, reader: Some(reader) }
    }

    /// Runs kubectl and asserts it succeeded; returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_raw(args, None);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of a JSON object.
    pub fn apply(&self, object: &Value) {
        let out = self.kubectl_raw(&["apply", "-f", "-"], Some(&object.to_string()));
        assert!(out.status.success(), "kubectl apply failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// An object as JSON (None when it does not exist).
    pub fn get(&self, kind: &str, name: &str) -> Option<Value> {
        let out = self.kubectl_raw(&["get", kind, name, "-o", "json"], None);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("NotFound") || err.contains("not found"), "kubectl get {kind} {name}: {err}");
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("kubectl json"))
    }

    /// Waits until pod `name` satisfies `pred`; returns it. Panics with the
    /// last state and the agent's log after `timeout`.
    pub fn wait_pod(&self, name: &str, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Some(pod) = self.get("pod", name) {
                if pred(&pod) {
                    return pod;
                }
                last = pod;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "pod {name} never became {what} within {timeout:?}; last status: {}\nagent log:\n{}",
            serde_json::to_string_pretty(&last["status"]).unwrap_or_default(),
            self.log("agent.log")
        );
    }

    /// Waits for the pod to be Running with condition Ready True.
    pub fn wait_ready(&self, name: &str) -> Value {
        self.wait_pod(name, "Running and Ready", Duration::from_secs(60), |p| {
            p["status"]["phase"] == "Running" && condition(p, "Ready") == Some("True")
        })
    }

    /// Waits until the pod is gone from the API.
    pub fn wait_gone(&self, name: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.get("pod", name).is_some() {
            assert!(Instant::now() < deadline, "pod {name} still exists after {timeout:?}\n{}", self.log("agent.log"));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `GET path` from `addr:port` over HTTP/1.0, from the node's network
    /// namespace (where pod IPs are routed); the response body.
    pub fn http_get_in_node(&self, addr: &str, port: u16, path: &str) -> anyhow::Result<String> {
        use std::io::Read;
        let target = format!("{addr}:{port}");
        self.veth.b.run_in(|| {
            let sock: std::net::SocketAddr = target.parse()?;
            let mut stream = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(3))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {target}\r\n\r\n").as_bytes())?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
            anyhow::ensure!(head.starts_with("HTTP/1.") && head.contains(" 200 "), "GET {target}{path}: {head}");
            Ok(body.to_owned())
        })
    }

    /// `ctr -n k8s.io <args>` against the node's containerd.
    pub fn ctr(&self, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.containerd_socket())
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .expect("run ctr");
        assert!(out.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Containers (sandboxes included) containerd holds.
    pub fn runtime_containers(&self) -> Vec<String> {
        self.ctr(&["containers", "ls", "-q"])
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    }

    fn cleanup_runtime(&self) {
        let socket = self.containerd_socket();
        if !socket.exists() {
            return;
        }
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async {
            let Ok(cri) = coxswain_kubelet::Cri::connect(&socket).await else { return };
            let Ok(sandboxes) = cri.list_sandboxes(Default::default()).await else { return };
            for s in sandboxes {
                let _ = tokio::time::timeout(Duration::from_secs(10), cri.stop_sandbox(&s.id)).await;
                let _ = tokio::time::timeout(Duration::from_secs(10), cri.remove_sandbox(&s.id)).await;
            }
        });
    }
}

/// kubectl on a terminal of its own (a pty whose other end the test holds), in the
/// control plane's network namespace: what `kubectl exec -it` and `kubectl attach -it`
/// need. The terminal starts at 24 rows by 80 columns.
#[derive(Debug)]
pub struct PtyKubectl {
    child: Child,
    master: std::fs::File,
    slave_path: PathBuf,
    output: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl PtyKubectl {
    /// Types `text` on the terminal.
    pub fn send(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).expect("write to the terminal");
        self.master.flush().expect("flush the terminal");
    }

    /// Everything kubectl printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until the output contains `needle`; returns the output. Panics after `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output();
            if out.contains(needle) {
                return out;
            }
            assert!(Instant::now() < deadline, "the terminal never showed {needle:?} within {timeout:?}; it shows:\n{out}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resizes the terminal (the kernel tells kubectl with SIGWINCH).
    pub fn resize(&self, rows: u16, cols: u16) {
        let out = Command::new("stty")
            .arg("-F")
            .arg(&self.slave_path)
            .args(["rows", &rows.to_string(), "cols", &cols.to_string()])
            .output()
            .expect("run stty");
        assert!(out.status.success(), "stty: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Waits for kubectl to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "kubectl did not exit within {timeout:?}; the terminal shows:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PtyKubectl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The reader ends once no process holds the terminal's other end.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// The status of condition `ty` of an object.
pub fn condition<'a>(obj: &'a Value, ty: &str) -> Option<&'a str> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)?["status"]
        .as_str()
}

/// The status of container `name` of a pod.
pub fn container_status<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

impl Drop for KubeletEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- agent log (tail) ---\n{}", self.log("agent.log"));
        }
        self.cleanup_runtime();
        self.stop_agent();
        // Shims and anything else still pointing at our containerd.
        let socket = self.containerd_socket().display().to_string();
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else { continue };
                let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if cmdline.contains(&socket) || cmdline.contains(&self.dir.path().display().to_string()) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
        if let Some(mut cp) = self.control_plane.take() {
            stop(&mut cp, Duration::from_secs(5));
        }
        // Mounts left under our directory (rootfs, shm), deepest first.
        let root = self.dir.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| m.starts_with(&root))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
