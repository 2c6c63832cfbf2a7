//! End to end, against a cluster brought up by `cargo xtask up`: the real
//! kubectl, real containerd on every node, real packets through the eBPF
//! dataplane.
//!
//! These tests are `#[ignore]`d: `cargo xtask test` brings up a dedicated
//! cluster (`up --instance 1`, its own addresses and names, beside any
//! cluster of the user's), runs them one at a time with
//! `COXSWAIN_E2E_DATA_DIR` pointing at it, then takes it down and checks
//! that nothing is left. By hand:
//!
//! ```sh
//! cargo xtask up --instance 1 --nodes 3 --data-dir /tmp/cox-e2e
//! COXSWAIN_E2E_DATA_DIR=/tmp/cox-e2e cargo test -p coxswain-tests --test e2e -- --ignored --test-threads=1
//! cargo xtask down --data-dir /tmp/cox-e2e --purge
//! ```
//!
//! Every request is sent from the host or from pods of the cluster to
//! addresses inside it; the cluster's policy rules keep untranslated
//! packets from ever leaving the machine.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The cluster under test.
struct Cluster {
    data: PathBuf,
    instance: u8,
    nodes: u8,
}

impl Cluster {
    fn from_env() -> Cluster {
        coxswain_tests::require_root();
        let data = PathBuf::from(
            std::env::var("COXSWAIN_E2E_DATA_DIR")
                .expect("COXSWAIN_E2E_DATA_DIR: the data directory of a cluster from `cargo xtask up` (see the module docs)"),
        );
        let state = std::fs::read_to_string(data.join("run/cluster.env")).expect("run/cluster.env of the cluster");
        let get = |key: &str| -> u8 {
            state
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{key} missing from cluster.env"))
        };
        Cluster {
            instance: get("instance"),
            nodes: get("nodes"),
            data,
        }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.data.join("admin.kubeconfig")
    }

    /// The venv's kubectl with this cluster's kubeconfig.
    fn kubectl_command(&self) -> Command {
        let venv = std::env::var("COXSWAIN_VENV").unwrap_or_else(|_| "/opt/coxswain/venv".into());
        let mut cmd = Command::new(Path::new(&venv).join("bin/kubectl"));
        cmd.arg("--kubeconfig").arg(self.kubeconfig());
        cmd
    }

    fn kubectl_raw(&self, args: &[&str], stdin: Option<&str>) -> Output {
        run(self.kubectl_command().args(args), stdin)
    }

    /// kubectl; asserts success, returns stdout.
    fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_raw(args, None);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, namespace: &str, yaml: &str) {
        let out = self.kubectl_raw(&["apply", "-n", namespace, "-f", "-"], Some(yaml));
        assert!(out.status.success(), "kubectl apply failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all)).expect("kubectl json")
    }

    /// Node `k`'s address on the node bridge.
    fn node_ip(&self, k: u8) -> String {
        format!("10.{}.0.{k}", 250 + self.instance)
    }

    fn netns(&self, k: u8) -> Option<String> {
        let tag = if self.instance == 0 { "cox".to_owned() } else { format!("cox{}", self.instance) };
        (k > 1).then(|| format!("{tag}-node{k}"))
    }

    fn node_of(&self, name: &str) -> u8 {
        name.strip_prefix("node-").and_then(|k| k.parse().ok()).unwrap_or_else(|| panic!("unexpected node name {name}"))
    }

    fn agent_pid(&self, k: u8) -> i32 {
        std::fs::read_to_string(self.data.join(format!("run/agent-{k}.pid")))
            .expect("agent pid file")
            .trim()
            .parse()
            .expect("pid")
    }

    fn agent_log(&self, k: u8) -> String {
        let text = std::fs::read_to_string(self.data.join(format!("logs/agent-{k}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Stops node `k`'s agent (SIGTERM, or SIGKILL when `kill`) and returns
    /// what it takes to start it again.
    fn stop_agent(&self, k: u8, kill: bool) -> AgentLaunch {
        let pid = self.agent_pid(k);
        let read = |file: &str| -> Vec<String> {
            std::fs::read(format!("/proc/{pid}/{file}"))
                .expect("the agent runs")
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        };
        let launch = AgentLaunch {
            argv: read("cmdline"),
            env: read("environ"),
            netns: self.netns(k),
        };
        let signal = if kill { nix::sys::signal::Signal::SIGKILL } else { nix::sys::signal::Signal::SIGTERM };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).expect("signal the agent");
        let deadline = Instant::now() + Duration::from_secs(30);
        while alive(pid) {
            assert!(Instant::now() < deadline, "node-{k}'s agent did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        launch
    }

    /// Starts an agent stopped by [`Cluster::stop_agent`] again, as `up` did.
    fn start_agent(&self, k: u8, launch: &AgentLaunch) {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join(format!("logs/agent-{k}.log")))
            .expect("agent log");
        let mut cmd = match &launch.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(&launch.argv[0]);
                c
            }
            None => Command::new(&launch.argv[0]),
        };
        cmd.args(&launch.argv[1..])
            .env_clear()
            .envs(launch.env.iter().filter_map(|kv| kv.split_once('=')))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        let child = cmd.spawn().expect("restart the agent");
        std::fs::write(self.data.join(format!("run/agent-{k}.pid")), child.id().to_string()).unwrap();
        // Reaped by nobody: the agent outlives the test like `up`'s do.
        std::mem::forget(child);
    }

    /// Waits until node `k`'s restarted agent serves its kubelet endpoint
    /// (logs and exec go there).
    fn wait_kubelet(&self, k: u8) {
        let addr: std::net::SocketAddr = format!("{}:10250", self.node_ip(k)).parse().unwrap();
        self.wait(&format!("node-{k}'s kubelet endpoint"), Duration::from_secs(60), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        });
    }

    fn wait(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !check() {
            assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn node_ready(&self, k: u8) -> Option<String> {
        let node = self.json(&["get", "node", &format!("node-{k}")]);
        condition(&node, "Ready").map(str::to_owned)
    }

    /// Waits for `kubectl rollout status`.
    fn rollout(&self, namespace: &str, deployment: &str) {
        self.kubectl(&["rollout", "status", "-n", namespace, &format!("deployment/{deployment}"), "--timeout=180s"]);
    }

    /// Pods of `namespace` matching `selector` that are Ready and not
    /// terminating.
    fn ready_pods(&self, namespace: &str, selector: &str) -> Vec<Value> {
        let list = self.json(&["get", "pods", "-n", namespace, "-l", selector]);
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && condition(p, "Ready") == Some("True"))
            .cloned()
            .collect()
    }

    /// Pods of `namespace` matching `selector`, terminating ones included.
    fn pod_count(&self, namespace: &str, selector: &str) -> usize {
        self.json(&["get", "pods", "-n", namespace, "-l", selector])["items"].as_array().unwrap().len()
    }

    /// The `web` Deployment of `replicas` (v1) and its Service, rolled out, and
    /// a client pod `client` on node `client_node`; the Service's ClusterIP.
    fn web_with_client(&self, namespace: &str, replicas: u32, client_node: u8) -> String {
        self.apply(namespace, &web_yaml(replicas, "coxswain.local/demo:v1"));
        self.rollout(namespace, "web");
        self.client_pod(namespace, "client", client_node);
        self.cluster_ip(namespace, "web")
    }

    fn cluster_ip(&self, namespace: &str, service: &str) -> String {
        self.kubectl(&["get", "service", "-n", namespace, service, "-o", "jsonpath={.spec.clusterIP}"])
    }

    /// A client pod on node `k` that only sleeps; commands run in it with
    /// `kubectl exec`.
    fn client_pod(&self, namespace: &str, name: &str, k: u8) {
        self.apply(
            namespace,
            &format!(
                r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},
                "spec":{{"nodeName":"node-{k}","terminationGracePeriodSeconds":1,
                "containers":[{{"name":"c","image":"coxswain.local/demo:v1","command":["sleep","3600"]}}]}}}}"#
            ),
        );
        self.wait(&format!("client pod {name} Ready"), Duration::from_secs(90), || {
            let pod = self.json(&["get", "pod", "-n", namespace, name]);
            condition(&pod, "Ready") == Some("True")
        });
    }

    /// `GET /` through busybox nc in pod `pod`; the body's last line.
    fn get_from_pod(&self, namespace: &str, pod: &str, ip: &str, port: u16) -> Result<String, String> {
        let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port} | tail -n 1");
        let out = self.kubectl_raw(&["exec", "-n", namespace, pod, "--", "sh", "-c", &script], None);
        let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && body.starts_with("coxswain demo") {
            Ok(body)
        } else {
            Err(format!("{body}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// Starts a bounded request loop in `pod` against `ip:port`: `count`
    /// requests, one every 50 ms; prints `ok=N fail=M` at the end.
    fn request_loop(&self, namespace: &str, pod: &str, ip: &str, port: u16, count: u32) -> Child {
        let script = format!(
            "ok=0; fail=0; i=0; while [ $i -lt {count} ]; do i=$((i+1)); \
             if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port} | grep -q 'coxswain demo'; \
             then ok=$((ok+1)); else fail=$((fail+1)); echo \"request $i failed\"; fi; sleep 0.05; done; \
             echo \"ok=$ok fail=$fail\""
        );
        self.kubectl_command()
            .args(["exec", "-n", namespace, pod, "--", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the request loop")
    }
}

/// Runs `cmd` to the end with `stdin` as its input; its output.
fn run(cmd: &mut Command, stdin: Option<&str>) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("failed to run {:?}: {e}", cmd.get_program()));
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("command output")
}

/// Returns the loop's output; asserts it ran to the end with no failure.
fn assert_no_failed_request(child: Child, what: &str) -> String {
    let out = child.wait_with_output().expect("request loop output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary = stdout.lines().last().unwrap_or_default().to_owned();
    assert!(
        out.status.success() && summary.starts_with("ok=") && summary.ends_with(" fail=0"),
        "{what}: requests failed through the Service:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    summary
}

struct AgentLaunch {
    argv: Vec<String>,
    env: Vec<String>,
    netns: Option<String>,
}

struct NamespaceGuard<'a> {
    cluster: &'a Cluster,
    name: String,
}

impl Drop for NamespaceGuard<'_> {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kubectl_raw(&["delete", "namespace", &self.name, "--wait=true", "--timeout=120s"], None);
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().to_owned()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

fn condition<'a>(obj: &'a Value, ty: &str) -> Option<&'a str> {
    obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == ty)?["status"].as_str()
}

/// `GET /` from the host (socket load balancing translates the ClusterIP).
fn get_from_host(ip: &str, port: u16) -> Result<String, String> {
    use std::io::Read;
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().map_err(|e| format!("{e}"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    response
        .lines()
        .last()
        .filter(|l| l.starts_with("coxswain demo"))
        .map(str::to_owned)
        .ok_or(response)
}

fn namespace_yaml(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")
}

impl Cluster {
    fn create_namespace(&self, name: &str) -> NamespaceGuard<'_> {
        let _ = self.kubectl_raw(&["delete", "namespace", name, "--wait=true", "--timeout=120s"], None);
        let out = self.kubectl_raw(&["create", "-f", "-"], Some(&namespace_yaml(name)));
        assert!(out.status.success(), "create namespace {name}: {}", String::from_utf8_lossy(&out.stderr));
        // Pods are admitted once the namespace has its default ServiceAccount, which the
        // controller-manager creates just after the namespace (upstream's e2e framework waits
        // for it too).
        self.wait(&format!("the default ServiceAccount of {name}"), Duration::from_secs(60), || {
            self.kubectl_raw(&["get", "serviceaccount", "-n", name, "default"], None).status.success()
        });
        NamespaceGuard { cluster: self, name: name.to_owned() }
    }
}

/// The Deployment example of the Kubernetes documentation
/// (`controllers/nginx-deployment.yaml`), only the image changed.
const DOCS_DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx-deployment
  labels:
    app: nginx
spec:
  replicas: 3
  selector:
    matchLabels:
      app: nginx
  template:
    metadata:
      labels:
        app: nginx
    spec:
      containers:
      - name: nginx
        image: coxswain.local/demo:v1
        ports:
        - containerPort: 80
"#;

/// The Service example of the Kubernetes documentation (a Pod and a Service
/// reaching it through a named port), only the image changed.
const DOCS_SERVICE: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: nginx
  labels:
    app.kubernetes.io/name: proxy
spec:
  containers:
  - name: nginx
    image: coxswain.local/demo:v1
    ports:
      - containerPort: 80
        name: http-web-svc

---
apiVersion: v1
kind: Service
metadata:
  name: nginx-service
spec:
  selector:
    app.kubernetes.io/name: proxy
  ports:
  - name: name-of-service-port
    protocol: TCP
    port: 80
    targetPort: http-web-svc
"#;

/// A Service over a Deployment of the demo image that scales and rolls
/// without dropping a request: readiness gates new pods, and a preStop
/// pause keeps a terminating pod serving while every node's dataplane
/// drops it.
fn web_yaml(replicas: u32, image: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  strategy:
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 10
      tolerations:
      - {{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}}
      - {{key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}}
      containers:
      - name: httpd
        image: {image}
        ports:
        - {{name: http, containerPort: 80}}
        readinessProbe:
          httpGet: {{path: /, port: http}}
          periodSeconds: 1
        lifecycle:
          preStop:
            exec:
              command: ["sleep", "2"]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: http}}
"#
    )
}

#[test]
#[ignore = "needs a cluster from `cargo xtask up`; run by `cargo xtask test`"]
fn docs_examples_answer_from_pods_and_host_and_namespace_deletion_removes_them() {
    let c = Cluster::from_env();
    let ns = "e2e-docs";
    let guard = c.create_namespace(ns);
    c.apply(ns, DOCS_DEPLOYMENT);
    c.apply(ns, DOCS_SERVICE);
    c.rollout(ns, "nginx-deployment");
    c.wait("the docs Pod Ready", Duration::from_secs(90), || {
        condition(&c.json(&["get", "pod", "-n", ns, "nginx"]), "Ready") == Some("True")
    });
    let pods = c.ready_pods(ns, "app=nginx");
    assert_eq!(pods.len(), 3, "the Deployment runs 3 ready replicas");

    let ip = c.cluster_ip(ns, "nginx-service");
    // From a pod on every node (the tc path), and from the host (socket
    // load balancing): the named target port leads to the docs Pod.
    for k in 1..=c.nodes {
        let client = format!("client-{k}");
        c.client_pod(ns, &client, k);
        let body = c.get_from_pod(ns, &client, &ip, 80).unwrap_or_else(|e| panic!("from {client} on node-{k}: {e}\n{}", c.agent_log(k)));
        assert_eq!(body, "coxswain demo v1 from nginx", "from {client}");
    }
    assert_eq!(get_from_host(&ip, 80).expect("from the host"), "coxswain demo v1 from nginx");

    // A Service over the Deployment: every replica answers, wherever the
    // client runs.
    c.apply(ns, "apiVersion: v1\nkind: Service\nmetadata: {name: nginx}\nspec:\n  type: NodePort\n  selector: {app: nginx}\n  ports: [{port: 80}]\n");
    let deploy_ip = c.cluster_ip(ns, "nginx");
    let names: std::collections::BTreeSet<String> =
        pods.iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_owned()).collect();
    let mut seen = std::collections::BTreeSet::new();
    for attempt in 0..60 {
        let k = (attempt % u32::from(c.nodes)) as u8 + 1;
        let body = c.get_from_pod(ns, &format!("client-{k}"), &deploy_ip, 80).expect("through the Deployment's Service");
        seen.insert(body.rsplit(' ').next().unwrap().to_owned());
        if seen == names {
            break;
        }
    }
    assert_eq!(seen, names, "every replica is reached through the Service");
    // Its NodePort on every node, from the host and from a pod.
    let node_port: u16 = c
        .kubectl(&["get", "service", "-n", ns, "nginx", "-o", "jsonpath={.spec.ports[0].nodePort}"])
        .parse()
        .expect("a NodePort");
    for k in 1..=c.nodes {
        let node_ip = c.node_ip(k);
        let body = get_from_host(&node_ip, node_port).unwrap_or_else(|e| panic!("NodePort {node_ip}:{node_port} from the host: {e}"));
        assert!(body.starts_with("coxswain demo v1 from nginx-deployment-"), "{body}");
        let body = c
            .get_from_pod(ns, "client-1", &node_ip, node_port)
            .unwrap_or_else(|e| panic!("NodePort {node_ip}:{node_port} from client-1: {e}"));
        assert!(body.starts_with("coxswain demo v1 from nginx-deployment-"), "{body}");
    }

    // Deleting the namespace removes everything in it, and the dataplane
    // forgets the Service.
    drop(guard);
    assert!(c.kubectl_raw(&["get", "namespace", ns], None).status.code() != Some(0), "the namespace is gone");
    let leftovers = c.json(&["get", "pods,services,deployments,replicasets,endpointslices", "-A"]);
    let in_ns: Vec<&Value> = leftovers["items"].as_array().unwrap().iter().filter(|o| o["metadata"]["namespace"] == ns).collect();
    assert!(in_ns.is_empty(), "objects left in the deleted namespace: {in_ns:?}");
    c.wait("the Service gone from node-1's dataplane", Duration::from_secs(30), || get_from_host(&ip, 80).is_err());
}

#[test]
#[ignore = "needs a cluster from `cargo xtask up`; run by `cargo xtask test`"]
fn scaling_3_to_10_to_2_drops_no_request() {
    let c = Cluster::from_env();
    let ns = "e2e-scale";
    let _guard = c.create_namespace(ns);
    let ip = c.web_with_client(ns, 3, c.nodes);

    let requests = c.request_loop(ns, "client", &ip, 80, 400);
    c.kubectl(&["scale", "-n", ns, "deployment/web", "--replicas=10"]);
    c.rollout(ns, "web");
    assert_eq!(c.ready_pods(ns, "app=web").len(), 10);
    c.wait("the dataplane has 10 backends", Duration::from_secs(30), || {
        endpoint_count(&c, ns, "web") == 10
    });
    c.kubectl(&["scale", "-n", ns, "deployment/web", "--replicas=2"]);
    c.wait("2 pods left", Duration::from_secs(120), || {
        c.pod_count(ns, "app=web") == 2
    });
    let summary = assert_no_failed_request(requests, "scaling 3 -> 10 -> 2");
    eprintln!("scaling: {summary}");
    assert_eq!(endpoint_count(&c, ns, "web"), 2);
}

/// Ready endpoints of a Service, summed over its EndpointSlices.
fn endpoint_count(c: &Cluster, ns: &str, service: &str) -> usize {
    let slices = c.json(&["get", "endpointslices", "-n", ns, "-l", &format!("kubernetes.io/service-name={service}")]);
    slices["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["conditions"]["ready"] == true)
        .count()
}

#[test]
#[ignore = "needs a cluster from `cargo xtask up`; run by `cargo xtask test`"]
fn rolling_update_and_undo_drop_no_request() {
    let c = Cluster::from_env();
    let ns = "e2e-rollout";
    let _guard = c.create_namespace(ns);
    let ip = c.web_with_client(ns, 3, 1);

    let requests = c.request_loop(ns, "client", &ip, 80, 500);
    c.kubectl(&["set", "image", "-n", ns, "deployment/web", "httpd=coxswain.local/demo:v2"]);
    c.rollout(ns, "web");
    c.wait("v2 answers", Duration::from_secs(30), || {
        c.get_from_pod(ns, "client", &ip, 80).is_ok_and(|b| b.starts_with("coxswain demo v2"))
    });
    let history = c.kubectl(&["rollout", "history", "-n", ns, "deployment/web"]);
    assert!(history.contains('1') && history.contains('2'), "two revisions: {history}");
    c.kubectl(&["rollout", "undo", "-n", ns, "deployment/web"]);
    c.rollout(ns, "web");
    let summary = assert_no_failed_request(requests, "rolling update v1 -> v2 and undo");
    eprintln!("rollout: {summary}");
    // Only v1 answers once the undo is complete.
    c.wait("only v1 pods are left", Duration::from_secs(120), || {
        c.json(&["get", "pods", "-n", ns, "-l", "app=web"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["spec"]["containers"][0]["image"] == "coxswain.local/demo:v1")
    });
    for _ in 0..10 {
        let body = c.get_from_pod(ns, "client", &ip, 80).expect("after the undo");
        assert!(body.starts_with("coxswain demo v1"), "after the undo: {body}");
    }
}

#[test]
#[ignore = "needs a cluster from `cargo xtask up`; run by `cargo xtask test`"]
fn a_dead_node_agent_makes_its_node_not_ready_and_its_pods_move() {
    let c = Cluster::from_env();
    assert!(c.nodes >= 2, "needs at least 2 nodes");
    let ns = "e2e-node-down";
    let _guard = c.create_namespace(ns);
    let victim = c.nodes;
    let ip = c.web_with_client(ns, 4, 1);
    // Make sure the victim runs some of them (the scheduler spreads pods).
    let on_victim = |c: &Cluster| -> usize {
        c.ready_pods(ns, "app=web").iter().filter(|p| p["spec"]["nodeName"] == format!("node-{victim}")).count()
    };
    assert!(on_victim(&c) > 0, "the scheduler put no replica on node-{victim}");

    let launch = c.stop_agent(victim, true);
    let restart = Restart { cluster: &c, node: victim, launch: Some(launch) };
    c.wait(&format!("node-{victim} not Ready"), Duration::from_secs(90), || {
        c.node_ready(victim).as_deref() != Some("True")
    });
    // Evicted after their 2 s toleration; replacements run elsewhere.
    c.wait("4 ready replicas off the dead node", Duration::from_secs(120), || {
        let pods = c.ready_pods(ns, "app=web");
        pods.iter().filter(|p| p["spec"]["nodeName"] != format!("node-{victim}")).count() >= 4
    });
    for _ in 0..10 {
        c.get_from_pod(ns, "client", &ip, 80).expect("the Service keeps answering");
    }
    drop(restart);
    c.wait(&format!("node-{victim} Ready again"), Duration::from_secs(90), || {
        c.node_ready(victim).as_deref() == Some("True")
    });
    // Its old pods, evicted while it was away, are cleaned up.
    c.wait("the evicted pods gone", Duration::from_secs(90), || {
        c.pod_count(ns, "app=web") == 4
    });
}

/// Starts a stopped agent again when dropped (even when the test fails).
struct Restart<'a> {
    cluster: &'a Cluster,
    node: u8,
    launch: Option<AgentLaunch>,
}

impl Drop for Restart<'_> {
    fn drop(&mut self) {
        if let Some(launch) = self.launch.take() {
            self.cluster.start_agent(self.node, &launch);
        }
    }
}

#[test]
#[ignore = "needs a cluster from `cargo xtask up`; run by `cargo xtask test`"]
fn restarting_node_agents_keeps_established_connections() {
    let c = Cluster::from_env();
    let ns = "e2e-restart";
    let _guard = c.create_namespace(ns);
    // A TCP echo server behind a Service, and a client that keeps one
    // connection open for 20 s, sending a line every 250 ms.
    c.apply(
        ns,
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
      - name: echo
        image: coxswain.local/demo:v1
        command: ["nc", "-ll", "-p", "9000", "-e", "cat"]
        ports: [{containerPort: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{port: 9000}]
"#,
    );
    c.rollout(ns, "echo");
    let ip = c.cluster_ip(ns, "echo");
    let client_node = 1;
    c.apply(
        ns,
        &format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"talker"}},
            "spec":{{"nodeName":"node-{client_node}","restartPolicy":"Never",
            "containers":[{{"name":"c","image":"coxswain.local/demo:v1","command":["sh","-c",
            "(i=0; while [ $i -lt 80 ]; do i=$((i+1)); echo line-$i; sleep 0.25; done; sleep 2) | nc {ip} 9000 > /tmp/out & pid=$!; sleep 25; kill $pid 2>/dev/null; echo received=$(grep -c line- /tmp/out)"]}}]}}}}"#
        ),
    );
    c.wait("the talker running", Duration::from_secs(60), || {
        c.json(&["get", "pod", "-n", ns, "talker"])["status"]["phase"] == "Running"
    });
    std::thread::sleep(Duration::from_secs(2));
    // Restart the agent of the client's node and of every backend's node
    // while the connection carries data.
    let mut nodes: Vec<u8> = c
        .ready_pods(ns, "app=echo")
        .iter()
        .map(|p| c.node_of(p["spec"]["nodeName"].as_str().unwrap()))
        .collect();
    nodes.push(client_node);
    nodes.sort_unstable();
    nodes.dedup();
    for k in &nodes {
        let launch = c.stop_agent(*k, false);
        c.start_agent(*k, &launch);
    }
    for k in &nodes {
        c.wait_kubelet(*k);
    }
    c.wait("the talker done", Duration::from_secs(90), || {
        let phase = c.json(&["get", "pod", "-n", ns, "talker"])["status"]["phase"].clone();
        phase == "Succeeded" || phase == "Failed"
    });
    let talker = c.json(&["get", "pod", "-n", ns, "talker"]);
    eprintln!("talker: {}", talker["status"]);
    let logs = c.kubectl(&["logs", "-n", ns, "talker"]);
    assert_eq!(logs.trim(), "received=80", "every line came back over the one connection while agents on nodes {nodes:?} restarted");
}

impl Cluster {
    /// `coxctl` (built beside the tests) against this cluster.
    fn coxctl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        run(
            Command::new(coxswain_tests::workspace_bin("coxctl"))
                .env("KUBECONFIG", self.kubeconfig())
                .args(args),
            stdin,
        )
    }

    fn coxctl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.coxctl(args, stdin);
        assert!(
            out.status.success(),
            "coxctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
#[ignore = "needs a cluster from `cargo xtask up`; run by `cargo xtask test`"]
fn coxctl_drives_the_workflow_and_shows_the_dataplane() {
    let c = Cluster::from_env();
    let ns = "e2e-coxctl";
    let _guard = c.create_namespace(ns);
    let applied = c.coxctl_ok(&["apply", "-n", ns, "-f", "-"], Some(&web_yaml(2, "coxswain.local/demo:v1")));
    assert!(applied.contains("deployment.apps/web created") && applied.contains("service/web created"), "{applied}");
    let again = c.coxctl_ok(&["apply", "-n", ns, "-f", "-"], Some(&web_yaml(2, "coxswain.local/demo:v1")));
    assert!(again.contains("deployment.apps/web unchanged"), "{again}");
    c.coxctl_ok(&["rollout", "status", "-n", ns, "deployment/web", "--timeout", "3m"], None);
    let scaled = c.coxctl_ok(&["scale", "-n", ns, "deployment/web", "--replicas", "3"], None);
    assert!(scaled.contains("scaled"), "{scaled}");
    c.coxctl_ok(&["rollout", "status", "-n", ns, "deployment/web", "--timeout", "3m"], None);
    let pods = c.coxctl_ok(&["get", "pods", "-n", ns, "-o", "wide"], None);
    assert_eq!(pods.lines().filter(|l| l.starts_with("web-") && l.contains("Running")).count(), 3, "{pods}");

    // logs and exec stream from the pod's kubelet through the API server.
    let pod = c.ready_pods(ns, "app=web")[0]["metadata"]["name"].as_str().unwrap().to_owned();
    let out = c.coxctl(&["exec", "-n", ns, &pod, "--", "sh", "-c", "cat /tmp/index.html; exit 3"], None);
    assert_eq!(out.status.code(), Some(3), "exec exits with the command's status: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("coxswain demo v1 from {pod}"));
    c.apply(
        ns,
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"talk"},"spec":{"restartPolicy":"Never",
        "containers":[{"name":"c","image":"coxswain.local/demo:v1","command":["sh","-c","echo one; echo two"]}]}}"#,
    );
    c.wait("the talk pod done", Duration::from_secs(60), || {
        c.json(&["get", "pod", "-n", ns, "talk"])["status"]["phase"] == "Succeeded"
    });
    assert_eq!(c.coxctl_ok(&["logs", "-n", ns, "talk"], None), "one\ntwo\n");

    // Errors name what is wrong.
    let out = c.coxctl(&["get", "widgets"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(r#"the server doesn't have a resource type "widgets""#));

    let status = c.coxctl_ok(&["cluster", "status"], None);
    for k in 1..=c.nodes {
        assert!(status.lines().any(|l| l.starts_with(&format!("node-{k} ")) && l.contains("Ready")), "{status}");
    }
    assert!(status.contains("kube-scheduler") && status.contains("kube-controller-manager"), "{status}");

    // What only Coxswain shows: the Service in every node's eBPF maps, with
    // its 3 backends.
    let ip = c.cluster_ip(ns, "web");
    for k in 1..=c.nodes {
        let agent = format!("http://{}:10249", c.node_ip(k));
        c.wait(&format!("web in node-{k}'s maps"), Duration::from_secs(30), || {
            let out = c.coxctl(&["dataplane", "--agent", &agent, "-o", "json", "services"], None);
            let services: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            services.as_array().is_some_and(|list| {
                list.iter().any(|s| {
                    s["addr"] == ip.as_str() && s["backends"].as_array().is_some_and(|b| b.len() == 3)
                })
            })
        });
    }
    let deleted = c.coxctl_ok(&["delete", "-n", ns, "service", "web"], None);
    assert!(deleted.contains(r#"service "web" deleted"#), "{deleted}");
}

#[test]
#[ignore = "needs a cluster from `cargo xtask up`; run by `cargo xtask test`"]
fn pods_reach_the_api_server_through_the_kubernetes_service() {
    let c = Cluster::from_env();
    // The Service holds the first address of the service CIDR and lists the API server.
    let service_ip = format!("10.{}.0.1", 96 + 16 * u32::from(c.instance));
    let svc = c.json(&["get", "service", "-n", "default", "kubernetes"]);
    assert_eq!(svc["spec"]["clusterIP"], service_ip.as_str(), "{svc}");
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
    let endpoints = c.json(&["get", "endpoints", "-n", "default", "kubernetes"]);
    assert_eq!(endpoints["subsets"][0]["addresses"][0]["ip"], c.node_ip(1).as_str(), "{endpoints}");
    assert_eq!(endpoints["subsets"][0]["ports"][0]["port"], 6443);
    // From the host (socket load balancing), with the CA verifying the Service address as a
    // name of the serving certificate.
    let version = c.kubectl(&["--server", &format!("https://{service_ip}:443"), "get", "--raw", "/version"]);
    assert!(version.contains("gitVersion"), "{version}");

    let ns = "e2e-incluster";
    let _guard = c.create_namespace(ns);
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    for k in 1..=c.nodes {
        let pod = format!("caller-{k}");
        c.client_pod(ns, &pod, k);
        let exec = |script: &str| {
            let out = c.kubectl_raw(&["exec", "-n", ns, &pod, "--", "sh", "-c", script], None);
            (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
        };
        let (_, host, _) = exec("echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT");
        assert_eq!(host, format!("{service_ip}:443"), "the environment of {pod}");
        // A TCP connection to the Service through the eBPF dataplane; the server side of TLS
        // answers (a record of type 0x15, an alert, to a request that is not TLS).
        let (ok, record, err) = exec(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT | od -An -tx1 | head -n 1",
        );
        assert!(ok && record.starts_with("15 03"), "no TLS answer through the Service from {pod} on node-{k}: {record:?} {err}\n{}", c.agent_log(k));
        // And a real call with the pod's credentials (what rest.InClusterConfig does: its
        // token, its ca.crt, the Service's address): who am I? Made from the host, because
        // busybox's own TLS client sends no signature_algorithms extension, so a server may
        // only sign with SHA-1 for it, which rustls (rightly) refuses to do.
        let (_, token, _) = exec(&format!("cat {sa}/token"));
        let (_, ca, _) = exec(&format!("cat {sa}/ca.crt"));
        let ca_file = c.data.join(format!("{pod}-ca.crt"));
        std::fs::write(&ca_file, format!("{ca}\n")).expect("write the pod's CA");
        let venv = std::env::var("COXSWAIN_VENV").unwrap_or_else(|_| "/opt/coxswain/venv".into());
        let out = run(
            Command::new(Path::new(&venv).join("bin/kubectl"))
                .args(["--kubeconfig", "/dev/null", "--server", &format!("https://{host}")])
                .arg(format!("--certificate-authority={}", ca_file.display()))
                .args(["--token", &token, "auth", "whoami", "-o", "json"]),
            None,
        );
        let _ = std::fs::remove_file(&ca_file);
        assert!(out.status.success(), "the call with {pod}'s credentials failed: {}", String::from_utf8_lossy(&out.stderr));
        let review: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", out.stdout));
        assert_eq!(review["status"]["userInfo"]["username"], format!("system:serviceaccount:{ns}:default"), "{review}");
        assert_eq!(review["status"]["userInfo"]["extra"]["authentication.kubernetes.io/pod-name"], serde_json::json!([pod]));
        let (_, namespace, _) = exec(&format!("cat {sa}/namespace"));
        assert_eq!(namespace, ns);
    }
}

/// A LimitRange and a ResourceQuota on a real namespace: the Deployment's pods get the
/// LimitRange's defaults (and run with them), the quota stops the ReplicaSet at its limit
/// with upstream's message, raising the quota lets the rollout finish, and scaling down
/// gives the quota back (the resourcequota controller recounts once the pods are gone).
#[test]
#[ignore = "needs a cluster from `cargo xtask up`; run by `cargo xtask test`"]
fn a_quota_caps_a_deployment_and_a_limit_range_defaults_its_pods() {
    let c = Cluster::from_env();
    let ns = "e2e-quota";
    let _guard = c.create_namespace(ns);
    c.apply(
        ns,
        r#"{"apiVersion":"v1","kind":"LimitRange","metadata":{"name":"defaults"},"spec":{"limits":[
        {"type":"Container","default":{"cpu":"200m","memory":"64Mi"},"defaultRequest":{"cpu":"50m","memory":"32Mi"}}]}}"#,
    );
    c.kubectl(&["create", "quota", "pods", "-n", ns, "--hard=pods=2,requests.cpu=1"]);
    let used = |resource: &str| -> String {
        c.json(&["get", "quota", "pods", "-n", ns])["status"]["used"][resource].as_str().unwrap_or("").to_owned()
    };
    c.wait("the quota counted", Duration::from_secs(30), || used("pods") == "0");
    c.apply(ns, &web_yaml(4, "coxswain.local/demo:v1"));
    c.wait("2 pods ready", Duration::from_secs(120), || c.ready_pods(ns, "app=web").len() == 2);
    c.wait("the ReplicaSet refused the rest", Duration::from_secs(60), || {
        c.json(&["get", "events", "-n", ns])["items"].as_array().unwrap().iter().any(|e| {
            e["reason"] == "FailedCreate"
                && e["message"].as_str().is_some_and(|m| {
                    m.contains("exceeded quota: pods, requested: pods=1, used: pods=2, limited: pods=2")
                })
        })
    });
    assert_eq!(c.pod_count(ns, "app=web"), 2);
    assert_eq!(used("requests.cpu"), "100m");
    let pod = &c.ready_pods(ns, "app=web")[0];
    let resources = &pod["spec"]["containers"][0]["resources"];
    assert_eq!(resources["requests"], serde_json::json!({"cpu": "50m", "memory": "32Mi"}), "{pod}");
    assert_eq!(resources["limits"], serde_json::json!({"cpu": "200m", "memory": "64Mi"}), "{pod}");
    assert!(
        pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"].as_str().is_some_and(|a| a.starts_with("LimitRanger plugin set: ")),
        "{pod}"
    );
    c.kubectl(&["patch", "quota", "pods", "-n", ns, "-p", r#"{"spec":{"hard":{"pods":"4"}}}"#]);
    c.rollout(ns, "web");
    assert_eq!(c.ready_pods(ns, "app=web").len(), 4);
    c.kubectl(&["scale", "-n", ns, "deployment/web", "--replicas=1"]);
    c.wait("the quota given back", Duration::from_secs(120), || used("pods") == "1");
}
