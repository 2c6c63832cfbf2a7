//! The kubelet on real containerd and runc: pods created through the API
//! server (with the real kubectl) run on a node agent in its own network
//! namespace, with images built from busybox-static. Each test has its own
//! control plane, agent, containerd and addresses; the heavy part runs one
//! test at a time so timings stay meaningful on small machines.

use std::{
    io::Read,
    path::Path,
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use coxswain_tests::{
    kubelet_env::{BUSYBOX, EnvOptions, KubeletEnv, condition, container_status},
    workspace_bin,
};
use serde_json::{Value, json};

/// One cluster at a time: containerd, runc and CNI are heavy on two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn pod(name: &str, node: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["nodeName"] = json!(node);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

fn sh(name: &str, script: &str) -> Value {
    json!({"name": name, "image": BUSYBOX, "imagePullPolicy": "IfNotPresent", "command": ["sh", "-c", script]})
}

fn restart_count(pod: &Value, container: &str) -> i64 {
    container_status(pod, container)["restartCount"].as_i64().unwrap_or(0)
}

/// The Events about the object named `name` (any kind), as `kubectl get events` lists them.
fn events_of(env: &KubeletEnv, name: &str) -> Vec<Value> {
    let out = env.kubectl(&["get", "events", "--field-selector", &format!("involvedObject.name={name}"), "-o", "json"]);
    let list: Value = serde_json::from_str(&out).expect("kubectl json");
    list["items"].as_array().cloned().unwrap_or_default()
}

/// Waits for an Event about `name` with `reason` whose message contains `message`.
fn wait_event(env: &KubeletEnv, name: &str, reason: &str, message: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = events_of(env, name);
        if let Some(e) = events.iter().find(|e| e["reason"] == reason && e["message"].as_str().is_some_and(|m| m.contains(message))) {
            return e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} event saying {message:?} about {name}; events: {}\n{}",
            serde_json::to_string_pretty(&events).unwrap_or_default(),
            env.log("agent.log")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn in_cidr(ip: &str, cidr: &str) -> bool {
    let cidr = coxswain_kubelet::Ipv4Cidr::parse(cidr).expect("an IPv4 CIDR");
    let ip: std::net::Ipv4Addr = ip.parse().expect("an IPv4 address");
    let mask = u32::MAX << (32 - cidr.prefix);
    u32::from(ip) & mask == u32::from(cidr.network)
}

#[test]
fn node_registers_and_pods_run_with_env_volumes_and_networking() {
    let _serial = serial();
    let env = KubeletEnv::start(11, EnvOptions::default());
    let node_name = env.node_name.clone();

    // The node registers itself, not Ready until it has a pod CIDR.
    let deadline = Instant::now() + Duration::from_secs(60);
    let node = loop {
        if let Some(n) = env.get("node", &node_name)
            && n["status"]["conditions"].as_array().is_some_and(|c| c.len() == 4)
        {
            break n;
        }
        assert!(Instant::now() < deadline, "node never registered\n{}", env.log("agent.log"));
        std::thread::sleep(Duration::from_millis(200));
    };
    for key in ["cpu", "memory", "pods", "ephemeral-storage"] {
        assert!(node["status"]["capacity"][key].is_string(), "capacity.{key}: {node}");
        assert!(node["status"]["allocatable"][key].is_string(), "allocatable.{key}: {node}");
    }
    for ty in ["MemoryPressure", "PIDPressure"] {
        assert_eq!(condition(&node, ty), Some("False"), "{ty}: {}", node["status"]["conditions"]);
    }
    // DiskPressure follows the disk (upstream's threshold: under 10 % free).
    let fs = nix::sys::statvfs::statvfs(env.dir.path()).unwrap();
    let pressure = fs.blocks_available() * 10 < fs.blocks();
    assert_eq!(condition(&node, "DiskPressure"), Some(if pressure { "True" } else { "False" }));
    // The pod CIDR: assigned by the control plane when it runs node IPAM, by hand otherwise.
    let pod_cidr = match node["spec"]["podCIDR"].as_str() {
        Some(assigned) => assigned.to_owned(),
        None => {
            let fresh = env.get("node", &node_name).unwrap();
            if fresh["spec"]["podCIDR"].is_null() {
                assert_eq!(condition(&fresh, "Ready"), Some("False"), "Ready without a pod CIDR");
            }
            let patch = json!({"spec": {"podCIDR": env.pod_cidr, "podCIDRs": [env.pod_cidr]}}).to_string();
            env.kubectl(&["patch", "node", &node_name, "-p", &patch]);
            env.get("node", &node_name).unwrap()["spec"]["podCIDR"].as_str().unwrap().to_owned()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.get("node", &node_name).is_none_or(|n| condition(&n, "Ready") != Some("True")) {
        assert!(Instant::now() < deadline, "node never became Ready\n{}", env.log("agent.log"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let lease = env.kubectl(&["get", "lease", "-n", "kube-node-lease", &node_name, "-o", "json"]);
    let lease: Value = serde_json::from_str(&lease).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], node_name);
    assert!(lease["spec"]["renewTime"].is_string());
    let conflist = std::fs::read_to_string(env.kubelet_root().join("cni/net.d/10-coxswain.conflist")).unwrap();
    assert!(conflist.contains(&pod_cidr), "{conflist}");

    env.apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app-config"},
        "data": {"greeting": "hello", "file.txt": "from-configmap"}}));
    env.apply(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "app-secret"},
        "stringData": {"password": "s3cret"}}));
    let host_dir = env.dir.path().join("host-volume");
    let server = {
        let mut c = sh(
            "server",
            "echo \"$GREETING $PASSWORD $POD_NAME $POD_NAMESPACE $POD_IP $NODE_NAME $LITERAL\" > index.html; \
             cat /cfg/file.txt >> index.html; echo >> index.html; cat /secret/password >> index.html; echo >> index.html; \
             cat /work/order >> index.html; pwd > /host/marker; exec httpd -f -p 8080 -h /www",
        );
        c["workingDir"] = json!("/www");
        c["env"] = json!([
            {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "greeting"}}},
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "password"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "LITERAL", "value": "lit-$(GREETING)"},
        ]);
        c["ports"] = json!([{"name": "http", "containerPort": 8080}]);
        c["readinessProbe"] = json!({"httpGet": {"path": "/index.html", "port": "http"}, "periodSeconds": 1});
        c["volumeMounts"] = json!([
            {"name": "www", "mountPath": "/www"},
            {"name": "cfg", "mountPath": "/cfg"},
            {"name": "secret", "mountPath": "/secret"},
            {"name": "work", "mountPath": "/work"},
            {"name": "host", "mountPath": "/host"},
        ]);
        c
    };
    let mut sidecar = sh("sidecar", "exec sleep 3600");
    sidecar["resources"] = json!({"limits": {"cpu": "250m", "memory": "64Mi"}});
    let mut init_a = sh("init-a", "printf a > /work/order");
    init_a["volumeMounts"] = json!([{"name": "work", "mountPath": "/work"}]);
    let mut init_b = sh("init-b", "test \"$(cat /work/order)\" = a && printf b >> /work/order");
    init_b["volumeMounts"] = json!([{"name": "work", "mountPath": "/work"}]);
    env.apply(&pod("web", &node_name, json!({
        "terminationGracePeriodSeconds": 2,
        "initContainers": [init_a, init_b],
        "containers": [server, sidecar],
        "volumes": [
            {"name": "www", "emptyDir": {}},
            {"name": "work", "emptyDir": {}},
            {"name": "cfg", "configMap": {"name": "app-config"}},
            {"name": "secret", "secret": {"secretName": "app-secret"}},
            {"name": "host", "hostPath": {"path": host_dir.display().to_string(), "type": "DirectoryOrCreate"}},
        ],
    })));
    let web = env.wait_ready("web");
    let status = &web["status"];
    let ip = status["podIP"].as_str().unwrap();
    assert!(in_cidr(ip, &pod_cidr), "pod IP {ip} outside {pod_cidr}");
    assert_eq!(status["podIPs"][0]["ip"], ip);
    assert_eq!(status["hostIP"], env.veth.b_addr);
    assert!(status["startTime"].is_string());
    for ty in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert_eq!(condition(&web, ty), Some("True"), "{ty}");
    }
    for init in status["initContainerStatuses"].as_array().unwrap() {
        assert_eq!(init["state"]["terminated"]["exitCode"], 0, "{init}");
        assert_eq!(init["state"]["terminated"]["reason"], "Completed", "{init}");
    }
    for name in ["server", "sidecar"] {
        let c = container_status(&web, name);
        assert!(c["state"]["running"]["startedAt"].is_string(), "{c}");
        assert_eq!(c["ready"], true);
        assert_eq!(c["restartCount"], 0);
        assert!(c["containerID"].as_str().unwrap().starts_with("containerd://"));
    }

    // The pod answers on its IP from the node, with what env and volumes gave it.
    let body = env.http_get_in_node(ip, 8080, "/index.html").expect("the pod answers from the node");
    let want = format!("hello s3cret web default {ip} {node_name} lit-hello\nfrom-configmap\ns3cret\nab");
    assert_eq!(body.trim(), want);
    assert_eq!(std::fs::read_to_string(host_dir.join("marker")).unwrap().trim(), "/www");

    // Deletion leaves nothing behind in containerd or on disk.
    let uid = web["metadata"]["uid"].as_str().unwrap().to_owned();
    env.kubectl(&["delete", "pod", "web", "--timeout=30s"]);
    env.wait_gone("web", Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env.runtime_containers().is_empty() {
        assert!(Instant::now() < deadline, "containers left: {:?}", env.runtime_containers());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!env.kubelet_root().join("pods").join(&uid).exists(), "pod directory left behind");
    assert!(env.http_get_in_node(ip, 8080, "/index.html").is_err(), "the deleted pod still answers");
}

#[test]
fn restart_policies_and_crash_loop_backoff() {
    let _serial = serial();
    let env = KubeletEnv::start(12, EnvOptions { pod_cidr_flag: true });
    let node = env.node_name.clone();
    env.apply(&pod("crasher", &node, json!({"containers": [sh("c", "echo crashing; exit 3")]})));
    env.apply(&pod("once-fail", &node, json!({"restartPolicy": "Never", "containers": [sh("c", "exit 1")]})));
    env.apply(&pod("once-ok", &node, json!({"restartPolicy": "OnFailure", "containers": [sh("c", "exit 0")]})));
    env.apply(&pod("init-fails", &node, json!({"restartPolicy": "Never",
        "initContainers": [sh("init", "exit 4")], "containers": [sh("c", "sleep 3600")]})));

    // Always: the first restart is immediate, then back-off (10 s, doubling).
    let crash = env.wait_pod("crasher", "in CrashLoopBackOff", Duration::from_secs(60), |p| {
        let c = container_status(p, "c");
        c["state"]["waiting"]["reason"] == "CrashLoopBackOff" && restart_count(p, "c") >= 1
    });
    let c = container_status(&crash, "c");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 3, "{c}");
    assert_eq!(c["lastState"]["terminated"]["reason"], "Error");
    assert!(c["state"]["waiting"]["message"].as_str().unwrap().contains("back-off"), "{c}");
    assert_eq!(crash["status"]["phase"], "Running");
    assert_eq!(condition(&crash, "Ready"), Some("False"));
    let uid = crash["metadata"]["uid"].as_str().unwrap().to_owned();
    let backoff = wait_event(&env, "crasher", "BackOff", &format!("Back-off restarting failed container c in pod crasher_default({uid})"));
    assert_eq!(backoff["type"], "Warning");
    assert_eq!(backoff["involvedObject"]["fieldPath"], "spec.containers{c}");
    let seen_at = Instant::now();
    let count = restart_count(&crash, "c");
    let next = env.wait_pod("crasher", "restarted after its back-off", Duration::from_secs(60), |p| restart_count(p, "c") > count);
    let waited = seen_at.elapsed();
    assert!(waited >= Duration::from_secs(4), "restarted after {waited:?}: no back-off");
    assert!(restart_count(&next, "c") == count + 1);

    let failed = env.wait_pod("once-fail", "Failed", Duration::from_secs(60), |p| p["status"]["phase"] == "Failed");
    let c = container_status(&failed, "c");
    assert_eq!(c["state"]["terminated"]["exitCode"], 1);
    assert_eq!(c["restartCount"], 0);
    let ok = env.wait_pod("once-ok", "Succeeded", Duration::from_secs(60), |p| p["status"]["phase"] == "Succeeded");
    assert_eq!(container_status(&ok, "c")["state"]["terminated"]["reason"], "Completed");
    assert_eq!(condition(&ok, "Ready"), Some("False"));
    let init = env.wait_pod("init-fails", "Failed", Duration::from_secs(60), |p| p["status"]["phase"] == "Failed");
    assert_eq!(init["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"], 4);
    assert_eq!(container_status(&init, "c")["state"]["waiting"]["reason"], "PodInitializing");
    assert_eq!(condition(&init, "Initialized"), Some("False"));
}

#[test]
fn probes_of_each_kind_pass_and_fail() {
    let _serial = serial();
    let env = KubeletEnv::start(13, EnvOptions { pod_cidr_flag: true });
    let node = env.node_name.clone();
    let ctl = env.dir.path().join("probe-control");
    std::fs::create_dir_all(ctl.join("www")).unwrap();
    std::fs::write(ctl.join("alive"), "yes").unwrap();
    let fast = |p: Value| {
        let mut p = p;
        p["periodSeconds"] = json!(1);
        p["failureThreshold"] = json!(2);
        p
    };
    let mut http = sh("http", "exec httpd -f -p 8080 -h /ctl/www");
    http["readinessProbe"] = fast(json!({"httpGet": {"path": "/ready.html", "port": 8080}}));
    http["volumeMounts"] = json!([{"name": "ctl", "mountPath": "/ctl"}]);
    let mut tcp = sh("tcp", "mkdir -p /tmp/w; exec httpd -f -p 9090 -h /tmp/w");
    tcp["ports"] = json!([{"name": "alt", "containerPort": 9090}]);
    tcp["readinessProbe"] = fast(json!({"tcpSocket": {"port": "alt"}, "initialDelaySeconds": 1}));
    let mut exec = sh("exec", "exec sleep 3600");
    exec["startupProbe"] = fast(json!({"exec": {"command": ["cat", "/ctl/started"]}}));
    exec["startupProbe"]["failureThreshold"] = json!(120);
    exec["livenessProbe"] = fast(json!({"exec": {"command": ["cat", "/ctl/alive"]}}));
    exec["volumeMounts"] = json!([{"name": "ctl", "mountPath": "/ctl"}]);
    env.apply(&pod("probed", &node, json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [http, tcp, exec],
        "volumes": [{"name": "ctl", "hostPath": {"path": ctl.display().to_string()}}],
    })));
    let mut dead_tcp = sh("c", "exec sleep 3600");
    dead_tcp["readinessProbe"] = fast(json!({"tcpSocket": {"port": 9999}}));
    dead_tcp["livenessProbe"] = fast(json!({"httpGet": {"path": "/", "port": 9998}, "failureThreshold": 1}));
    env.apply(&pod("unready", &node, json!({"terminationGracePeriodSeconds": 1, "containers": [dead_tcp]})));

    // Startup probe failing and httpGet readiness failing (404): running, not ready.
    let p = env.wait_pod("probed", "running with the tcp container ready", Duration::from_secs(60), |p| {
        p["status"]["phase"] == "Running" && container_status(p, "tcp")["ready"] == true
    });
    assert_eq!(container_status(&p, "http")["ready"], false);
    assert_eq!(container_status(&p, "exec")["started"], false);
    assert_eq!(container_status(&p, "exec")["ready"], false);
    assert_eq!(condition(&p, "Ready"), Some("False"));

    // Startup (exec) and readiness (httpGet) now pass: the pod becomes Ready.
    std::fs::write(ctl.join("started"), "yes").unwrap();
    std::fs::write(ctl.join("www/ready.html"), "ok").unwrap();
    let p = env.wait_ready("probed");
    assert_eq!(container_status(&p, "exec")["started"], true);
    assert_eq!(restart_count(&p, "exec"), 0);

    // Readiness failing again takes the pod out of Ready without a restart.
    std::fs::remove_file(ctl.join("www/ready.html")).unwrap();
    let p = env.wait_pod("probed", "not Ready", Duration::from_secs(30), |p| condition(p, "Ready") == Some("False"));
    assert_eq!(restart_count(&p, "http"), 0);
    std::fs::write(ctl.join("www/ready.html"), "ok").unwrap();

    // Liveness (exec) failing restarts the container.
    std::fs::remove_file(ctl.join("alive")).unwrap();
    env.wait_pod("probed", "restarted by its liveness probe", Duration::from_secs(60), |p| restart_count(p, "exec") >= 1);
    std::fs::write(ctl.join("alive"), "yes").unwrap();
    env.wait_ready("probed");

    // tcpSocket readiness failing keeps a pod unready; httpGet liveness failing restarts it.
    let u = env.wait_pod("unready", "restarted by a failing httpGet liveness probe", Duration::from_secs(60), |p| restart_count(p, "c") >= 1);
    assert_eq!(condition(&u, "Ready"), Some("False"));
    assert_eq!(container_status(&u, "c")["ready"], false);

    // Each failing probe is told as upstream's kubelet tells it.
    let e = wait_event(&env, "unready", "Unhealthy", "Liveness probe failed: Get http://");
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["source"]["component"], "kubelet");
    wait_event(&env, "unready", "Unhealthy", "Readiness probe failed: dial tcp ");
    wait_event(&env, "unready", "Killing", "Container c failed liveness probe, will be restarted");
    wait_event(&env, "probed", "Unhealthy", "Startup probe failed: exit code 1");
    let described = env.kubectl(&["describe", "pod", "unready"]);
    assert!(described.contains("Liveness probe failed"), "{described}");
}

#[test]
fn graceful_termination_runs_pre_stop_then_term_then_kill() {
    let _serial = serial();
    let env = KubeletEnv::start(14, EnvOptions { pod_cidr_flag: true });
    let node = env.node_name.clone();
    let out = env.dir.path().join("term-out");
    let mut polite = sh("c", "trap 'echo term > /out/term; exit 0' TERM; while true; do sleep 0.2; done");
    polite["lifecycle"] = json!({"preStop": {"exec": {"command": ["sh", "-c", "echo prestop > /out/prestop"]}}});
    polite["volumeMounts"] = json!([{"name": "out", "mountPath": "/out"}]);
    env.apply(&pod("polite", &node, json!({
        "terminationGracePeriodSeconds": 30,
        "containers": [polite],
        "volumes": [{"name": "out", "hostPath": {"path": out.display().to_string(), "type": "DirectoryOrCreate"}}],
    })));
    env.apply(&pod("stubborn", &node, json!({
        "terminationGracePeriodSeconds": 3,
        "containers": [sh("c", "trap '' TERM; while true; do sleep 0.2; done")],
    })));
    env.wait_ready("polite");
    env.wait_ready("stubborn");

    // What `kubectl describe pod` shows of a started pod: upstream's reasons and wording,
    // from component kubelet on this node, about the container.
    let started = wait_event(&env, "polite", "Started", "Started container c");
    assert_eq!(started["type"], "Normal");
    assert_eq!(started["source"]["component"], "kubelet");
    assert_eq!(started["source"]["host"], node.as_str());
    assert_eq!(started["involvedObject"]["kind"], "Pod");
    assert_eq!(started["involvedObject"]["fieldPath"], "spec.containers{c}");
    wait_event(&env, "polite", "Pulled", &format!("Container image \"{BUSYBOX}\" already present on machine"));
    wait_event(&env, "polite", "Created", "Created container: c");
    let described = env.kubectl(&["describe", "pod", "polite"]);
    for needle in ["Pulled", "already present on machine", "Created container: c", "Started container c", "kubelet"] {
        assert!(described.contains(needle), "describe lacks {needle:?}:\n{described}");
    }

    let started = Instant::now();
    env.kubectl(&["delete", "pod", "polite", "--timeout=60s"]);
    let polite_took = started.elapsed();
    assert!(polite_took < Duration::from_secs(10), "a container that exits on SIGTERM took {polite_took:?}");
    assert_eq!(std::fs::read_to_string(out.join("prestop")).unwrap().trim(), "prestop");
    assert_eq!(std::fs::read_to_string(out.join("term")).unwrap().trim(), "term");
    assert_eq!(wait_event(&env, "polite", "Killing", "Stopping container c")["type"], "Normal");

    let started = Instant::now();
    env.kubectl(&["delete", "pod", "stubborn", "--timeout=60s"]);
    let stubborn_took = started.elapsed();
    assert!(
        stubborn_took >= Duration::from_secs(3) && stubborn_took < Duration::from_secs(12),
        "a container ignoring SIGTERM with a 3 s grace period took {stubborn_took:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env.runtime_containers().is_empty() {
        assert!(Instant::now() < deadline, "containers left: {:?}", env.runtime_containers());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn logs_and_exec_through_the_api_server_with_kubectl() {
    let _serial = serial();
    let env = KubeletEnv::start(15, EnvOptions { pod_cidr_flag: true });
    let node = env.node_name.clone();
    // stdout and stderr are separate pipes: a pause keeps their order certain.
    let mut counter = sh("counter", "for i in 1 2 3 4 5; do echo line $i; done; sleep 1; echo oops >&2; exec sleep 3600");
    counter["resources"] = json!({"limits": {"cpu": "250m", "memory": "64Mi"}});
    env.apply(&pod("talker", &node, json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [counter, sh("flaky", "echo attempt-$(date +%s%N); sleep 1; exit 1")],
    })));
    env.apply(&pod("ticker", &node, json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [sh("t", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.3; done")],
    })));
    env.wait_pod("talker", "Running", Duration::from_secs(60), |p| {
        p["status"]["phase"] == "Running" && container_status(p, "counter")["ready"] == true
    });

    // --previous: the flaky container's last run.
    env.wait_pod("talker", "flaky restarted", Duration::from_secs(60), |p| restart_count(p, "flaky") >= 1);
    let previous = env.kubectl(&["logs", "talker", "-c", "flaky", "--previous"]);
    assert!(previous.starts_with("attempt-"), "{previous:?}");
    let no_previous = env.kubectl_raw(&["logs", "talker", "-c", "counter", "--previous"], None);
    assert!(!no_previous.status.success());
    assert!(String::from_utf8_lossy(&no_previous.stderr).contains("previous terminated container"));

    let logs = env.kubectl(&["logs", "talker", "-c", "counter"]);
    assert_eq!(logs, "line 1\nline 2\nline 3\nline 4\nline 5\noops\n");
    let tail = env.kubectl(&["logs", "talker", "-c", "counter", "--tail", "2"]);
    assert_eq!(tail, "line 5\noops\n");

    // -f streams new lines as they are written.
    env.wait_ready("ticker");
    let kubectl = Path::new(&std::env::var("COXSWAIN_VENV").unwrap_or_else(|_| "/opt/coxswain/venv".into())).join("bin/kubectl");
    let mut follow = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", env.veth.a.name()))
        .arg(kubectl)
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .args(["logs", "-f", "ticker", "--tail", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = follow.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        let mut buf = [0u8; 256];
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && seen.matches("tick").count() < 5 {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        seen
    });
    let seen = reader.join().unwrap();
    let _ = follow.kill();
    let _ = follow.wait();
    let ticks: Vec<u64> = seen.lines().filter_map(|l| l.strip_prefix("tick ")?.parse().ok()).collect();
    assert!(ticks.len() >= 5, "kubectl logs -f gave {seen:?}");
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "lines out of order: {ticks:?}");

    // exec, not interactive: output, error output and the exit code.
    let out = env.kubectl_raw(&["exec", "talker", "-c", "counter", "--", "sh", "-c", "echo out; echo err >&2; exit 7"], None);
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err"));
    // Resources became cgroup limits.
    // (The container's own cgroup: v1 hierarchies or v2.)
    let limits = env.kubectl(&["exec", "talker", "-c", "counter", "--", "sh", "-c",
        "if [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then \
           cat /sys/fs/cgroup/memory/memory.limit_in_bytes; \
           echo $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us); \
         else p=$(grep '^0::' /proc/self/cgroup | cut -d: -f3); \
           cat /sys/fs/cgroup$p/memory.max /sys/fs/cgroup$p/cpu.max; fi"]);
    assert_eq!(limits, format!("{}\n25000 100000\n", 64u64 << 20));
    // exec -i: stdin reaches the command and its end is seen.
    let out = env.kubectl_raw(&["exec", "-i", "talker", "-c", "counter", "--", "sh", "-c", "cat; echo done"], Some("hello\nworld\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\nworld\ndone\n");
    // Unknown containers are refused by the API server.
    let bad = env.kubectl_raw(&["logs", "talker", "-c", "nope"], None);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("container nope is not valid for pod talker"));
}

#[test]
fn crash_loop_back_off_survives_an_agent_restart_and_the_node_tells_its_events() {
    let _serial = serial();
    let mut env = KubeletEnv::start(17, EnvOptions { pod_cidr_flag: true });
    let node = env.node_name.clone();

    // The Node's own events: the kubelet started, the node became Ready.
    let starting = wait_event(&env, &node, "Starting", "Starting kubelet.");
    assert_eq!(starting["involvedObject"]["kind"], "Node");
    assert_eq!(starting["source"]["host"], node.as_str());
    wait_event(&env, &node, "NodeReady", &format!("Node {node} status is now: NodeReady"));
    wait_event(&env, &node, "NodeHasSufficientMemory", &format!("Node {node} status is now: NodeHasSufficientMemory"));
    let described = env.kubectl(&["describe", "node", &node]);
    assert!(described.contains("Starting kubelet."), "{described}");

    // Attempt 0 exits and restarts at once, attempt 1 after 10 s; attempt 2's exit means 20 s.
    env.apply(&pod("crasher", &node, json!({"terminationGracePeriodSeconds": 1, "containers": [sh("c", "exit 3")]})));
    let looping = env.wait_pod("crasher", "backing off after its third exit", Duration::from_secs(90), |p| {
        let c = container_status(p, "c");
        restart_count(p, "c") == 2 && c["state"]["waiting"]["reason"] == "CrashLoopBackOff" && c["state"]["waiting"]["message"].as_str().is_some_and(|m| m.contains("back-off 20s"))
    });
    let finished: jiff::Timestamp = container_status(&looping, "c")["lastState"]["terminated"]["finishedAt"]
        .as_str()
        .expect("the last exit's finish time")
        .parse()
        .unwrap();

    // A new agent knows nothing in memory: the back-off comes from what containerd keeps.
    env.stop_agent();
    env.start_agent();
    let restarted = env.wait_pod("crasher", "restarted after its back-off", Duration::from_secs(90), |p| restart_count(p, "c") >= 3);
    let waited = jiff::Timestamp::now().duration_since(finished);
    // finishedAt has whole seconds: 20 s of back-off shows as at least 19.
    assert!(waited >= jiff::SignedDuration::from_secs(19), "restarted {waited:?} after the exit: the agent restart forgot the back-off");
    assert_eq!(restart_count(&restarted, "c"), 3);
}

#[test]
fn agent_restart_adopts_pods_and_missing_images_are_reported() {
    let _serial = serial();
    let mut env = KubeletEnv::start(16, EnvOptions { pod_cidr_flag: true });
    let node = env.node_name.clone();
    env.apply(&pod("steady", &node, json!({"terminationGracePeriodSeconds": 1, "containers": [sh("c", "exec sleep 3600")]})));
    env.apply(&pod("missing", &node, json!({"terminationGracePeriodSeconds": 1, "containers": [
        {"name": "c", "image": "coxswain.local/later:1", "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}
    ]})));
    let before = env.wait_ready("steady");
    let id = container_status(&before, "c")["containerID"].clone();

    let missing = env.wait_pod("missing", "waiting on its image", Duration::from_secs(60), |p| {
        matches!(container_status(p, "c")["state"]["waiting"]["reason"].as_str(), Some("ErrImagePull" | "ImagePullBackOff"))
    });
    assert_eq!(missing["status"]["phase"], "Pending");
    let msg = container_status(&missing, "c")["state"]["waiting"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(msg.contains("coxswain.local/later:1"), "{msg}");

    // A restarted agent adopts the running pod: same container, no restart.
    env.stop_agent();
    env.start_agent();
    std::thread::sleep(Duration::from_secs(3));
    let after = env.wait_ready("steady");
    assert_eq!(container_status(&after, "c")["containerID"], id);
    assert_eq!(restart_count(&after, "c"), 0);
    assert_eq!(after["status"]["podIP"], before["status"]["podIP"]);

    // Importing the image (coxctl, through the agent) lets the pod start.
    let archive = env.dir.path().join("later.tar");
    let built = Command::new(workspace_bin("coxctl"))
        .args(["image", "build", "coxswain.local/later:1", "-o"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let deadline = Instant::now() + Duration::from_secs(30);
    let imported = loop {
        let out = env.in_node(&workspace_bin("coxctl")).args(["image", "import"]).arg(&archive).output().unwrap();
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    assert!(String::from_utf8_lossy(&imported.stdout).contains("coxswain.local/later:1"));
    env.wait_ready("missing");

    // Static pods: a manifest becomes a mirror pod that runs; removing it removes the pod.
    std::fs::write(
        env.manifests().join("static-web.yaml"),
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: static-web\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n"),
    )
    .unwrap();
    let mirror = format!("static-web-{node}");
    let p = env.wait_ready(&mirror);
    assert!(p["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string());
    std::fs::remove_file(env.manifests().join("static-web.yaml")).unwrap();
    env.wait_gone(&mirror, Duration::from_secs(30));
}

#[test]
fn pods_get_a_service_account_token_the_cluster_ca_and_the_api_servers_address() {
    let _serial = serial();
    let mut env = KubeletEnv::start(17, EnvOptions { pod_cidr_flag: true });
    let node = env.node_name.clone();
    const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    env.apply(&pod("caller", &node, json!({
        "terminationGracePeriodSeconds": 1,
        "initContainers": [sh("init", &format!("test -s {SA_DIR}/token"))],
        "containers": [sh("c", "exec sleep 3600")],
    })));
    env.apply(&pod("tokenless", &node, json!({
        "terminationGracePeriodSeconds": 1,
        "automountServiceAccountToken": false,
        "containers": [sh("c", "exec sleep 3600")],
    })));
    let caller = env.wait_ready("caller");
    assert_eq!(caller["spec"]["serviceAccountName"], "default");
    assert_eq!(caller["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"], 0, "the init container sees the token too");
    let exec = |pod: &str, script: &str| {
        let out = env.kubectl_raw(&["exec", pod, "-c", "c", "--", "sh", "-c", script], None);
        assert!(out.status.success(), "exec {script:?} in {pod}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // What rest.InClusterConfig reads: the Service's address in the environment...
    let vars: std::collections::BTreeMap<String, String> = exec("caller", "env")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    for (k, v) in [
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
        ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
        ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
        ("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443"),
        ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
        ("KUBERNETES_PORT_443_TCP_PORT", "443"),
        ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
    ] {
        assert_eq!(vars.get(k).map(String::as_str), Some(v), "{k} in {vars:?}");
    }
    // ...and the token, the CA and the namespace, written atomically through `..data`.
    let token = exec("caller", &format!("cat {SA_DIR}/token"));
    assert!(token.starts_with("eyJ") && token.matches('.').count() == 2, "{token:?}");
    assert_eq!(exec("caller", &format!("cat {SA_DIR}/ca.crt")), env.ca_pem());
    assert_eq!(exec("caller", &format!("cat {SA_DIR}/namespace")), "default");
    assert_eq!(exec("caller", &format!("readlink {SA_DIR}/token")).trim(), "..data/token");
    let denied = env.kubectl_raw(&["exec", "caller", "-c", "c", "--", "sh", "-c", &format!("echo x > {SA_DIR}/token")], None);
    assert!(!denied.status.success(), "the token volume is mounted read-only");
    assert_eq!(exec("tokenless", &format!("test -e {SA_DIR} && echo mounted || echo none")).trim(), "none");

    // The token is the pod's ServiceAccount, for as long as the pod exists.
    let as_pod = env.token_kubeconfig("caller", &token);
    let whoami = env.kubectl_as(&as_pod, &["auth", "whoami", "-o", "json"]);
    assert!(whoami.status.success(), "{}", String::from_utf8_lossy(&whoami.stderr));
    let who: Value = serde_json::from_slice(&whoami.stdout).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "system:serviceaccount:default:default", "{who}");
    assert_eq!(who["status"]["userInfo"]["extra"]["authentication.kubernetes.io/pod-name"], json!(["caller"]));
    assert_eq!(who["status"]["userInfo"]["extra"]["authentication.kubernetes.io/node-name"], json!([node]));

    // A projection may ask for another audience: the token is for it alone.
    let vault = json!({"name": "vault", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token", "audience": "vault", "expirationSeconds": 600}}]}});
    let mut c = sh("c", "exec sleep 3600");
    c["volumeMounts"] = json!([{"name": "vault", "mountPath": "/vault"}]);
    env.apply(&pod("vault-client", &node, json!({"terminationGracePeriodSeconds": 1, "containers": [c], "volumes": [vault]})));
    env.wait_ready("vault-client");
    let vault_token = exec("vault-client", "cat /vault/token");
    let review = |audiences: Value| {
        let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": vault_token, "audiences": audiences}});
        let out = env.kubectl_raw(&["create", "-o", "json", "-f", "-"], Some(&review.to_string()));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let reviewed = review(json!(["vault"]));
    assert_eq!(reviewed["status"]["authenticated"], true, "{reviewed}");
    assert_eq!(reviewed["status"]["user"]["username"], "system:serviceaccount:default:default");
    assert_eq!(review(json!([]))["status"]["authenticated"], false, "not a token for the API server");

    // A token that cannot be had yet (its ServiceAccount was deleted after the pod was
    // admitted) keeps the pod in ContainerCreating, saying why, and is asked for again.
    env.stop_agent();
    env.kubectl(&["create", "serviceaccount", "late"]);
    let mut late = pod("late-client", &node, json!({"terminationGracePeriodSeconds": 1, "containers": [sh("c", "exec sleep 3600")]}));
    late["spec"]["serviceAccountName"] = json!("late");
    env.apply(&late);
    env.kubectl(&["delete", "serviceaccount", "late"]);
    env.start_agent();
    let waiting = env.wait_pod("late-client", "waiting for its token", Duration::from_secs(60), |p| {
        container_status(p, "c")["state"]["waiting"]["message"].as_str().is_some_and(|m| m.contains("failed to fetch token"))
    });
    let w = &container_status(&waiting, "c")["state"]["waiting"];
    assert_eq!(w["reason"], "ContainerCreating", "{w}");
    assert!(w["message"].as_str().unwrap().contains(r#"MountVolume.SetUp failed for volume "kube-api-access-"#), "{w}");
    assert_eq!(waiting["status"]["phase"], "Pending");
    env.kubectl(&["create", "serviceaccount", "late"]);
    let running = env.wait_ready("late-client");
    assert_eq!(restart_count(&running, "c"), 0);

    // Deleted, the pod takes its token's validity with it.
    env.kubectl(&["delete", "pod", "caller", "--timeout=30s"]);
    env.wait_gone("caller", Duration::from_secs(30));
    let after = env.kubectl_as(&as_pod, &["auth", "whoami"]);
    assert!(!after.status.success());
    assert!(String::from_utf8_lossy(&after.stderr).contains("Unauthorized"), "{}", String::from_utf8_lossy(&after.stderr));
}

// --- The kubelet endpoint's security (TLS, authentication, authorization) ---

/// A client certificate and key (PEM) from a kubeconfig's embedded data.
fn credentials_of(kubeconfig: &Path) -> (String, String) {
    use base64::Engine;
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    let field = |name: &str| {
        let data = text.lines().find_map(|l| l.trim().strip_prefix(name)).unwrap_or_else(|| panic!("{name} in {}", kubeconfig.display()));
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(data.trim()).unwrap()).unwrap()
    };
    (field("client-certificate-data:"), field("client-key-data:"))
}

fn ca_der(env: &KubeletEnv) -> rustls::pki_types::CertificateDer<'static> {
    let pem = std::fs::read_to_string(env.control_plane_dir().join("pki/ca.crt")).unwrap();
    coxswain_auth::pki::first_cert_der(&pem).unwrap()
}

fn rustls_key(pem: &str) -> rustls::pki_types::PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// `GET path` on the kubelet's port from the control plane's namespace, over TLS that
/// trusts only the cluster CA and checks the kubelet's certificate for its address;
/// `(status, body)`, or the TLS or I/O error.
fn kubelet_get(env: &KubeletEnv, path: &str, identity: Option<&(String, String)>, bearer: Option<&str>) -> Result<(u16, String), String> {
    use std::io::Write;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der(env)).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().unwrap().with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder.with_client_auth_cert(coxswain_auth::pki::certs_der(cert).unwrap(), rustls_key(key)).unwrap(),
        None => builder.with_no_client_auth(),
    };
    let ip: std::net::IpAddr = env.veth.b_addr.parse().unwrap();
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {ip}:10250\r\n{auth}Connection: close\r\n\r\n");
    env.veth
        .a
        .run_in(|| {
            let tcp = std::net::TcpStream::connect_timeout(&(ip, 10250).into(), Duration::from_secs(3))?;
            tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
            let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), rustls::pki_types::ServerName::IpAddress(ip.into()))?;
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            tls.write_all(request.as_bytes())?;
            let mut response = Vec::new();
            tls.read_to_end(&mut response)?;
            Ok(String::from_utf8_lossy(&response).into_owned())
        })
        .map_err(|e| format!("{e:#}"))
        .map(|response| {
            let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
            let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            // Bodies here are short and plain; a chunked one is one chunk.
            let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
                body.split("\r\n").nth(1).unwrap_or_default().to_owned()
            } else {
                body.to_owned()
            };
            (code, body)
        })
}

#[test]
fn the_kubelet_serves_tls_with_a_ca_signed_certificate_and_authorizes_every_request() {
    let _serial = serial();
    let mut env = KubeletEnv::start(31, EnvOptions { pod_cidr_flag: true });
    let node = env.node_name.clone();
    env.apply(&pod("quiet", &node, json!({"terminationGracePeriodSeconds": 1, "containers": [sh("c", "echo from-quiet; exec sleep 3600")]})));
    let first_cert = env.wait_serving();

    // The certificate came through a CSR the node itself made, approved and signed.
    let csrs: Value = serde_json::from_str(&env.kubectl(&["get", "certificatesigningrequests", "-o", "json"])).unwrap();
    let serving: Vec<&Value> = csrs["items"].as_array().unwrap().iter().filter(|c| c["spec"]["signerName"] == "kubernetes.io/kubelet-serving").collect();
    assert_eq!(serving.len(), 1, "{csrs}");
    assert_eq!(serving[0]["spec"]["username"], format!("system:node:{node}"));
    assert_eq!(condition(serving[0], "Approved"), Some("True"), "{}", serving[0]);
    let info = coxswain_auth::pki::CertInfo::from_pem(&first_cert).unwrap();
    assert_eq!(info.common_name, format!("system:node:{node}"));
    assert_eq!(info.organizations, vec!["system:nodes"]);
    assert_eq!(info.ip_addresses, vec![env.veth.b_addr.parse::<std::net::IpAddr>().unwrap()]);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(env.serving_cert_path()).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "the serving key is readable by others");

    // No credential: 401. (The handshake itself verified the kubelet against the CA and its address.)
    let quiet_logs = "/containerLogs/default/quiet/c";
    env.wait_ready("quiet");
    assert_eq!(kubelet_get(&env, quiet_logs, None, None).unwrap(), (401, "Unauthorized".to_owned()));
    assert_eq!(kubelet_get(&env, "/healthz", None, Some("not-a-token")).unwrap().0, 401);
    // A user of the cluster without nodes/proxy: 403 with upstream's message.
    let alice = env.dir.path().join("alice.kubeconfig");
    env.issue_kubeconfig("alice", &["dev"], &alice);
    let alice = credentials_of(&alice);
    assert_eq!(
        kubelet_get(&env, quiet_logs, Some(&alice), None).unwrap(),
        (403, "Forbidden (user=alice, verb=get, resource=nodes, subresource=proxy)".to_owned())
    );
    // A certificate the cluster CA did not sign fails the handshake, whatever it claims.
    let rogue_ca = coxswain_auth::pki::CertificateAuthority::generate("rogue").unwrap();
    let rogue = rogue_ca.issue(&coxswain_auth::pki::CertRequest::client("kubernetes-admin", &["system:masters"])).unwrap();
    let refused = kubelet_get(&env, quiet_logs, Some(&(rogue.cert_pem, rogue.key_pem)), None).unwrap_err();
    assert!(refused.contains("alert") || refused.contains("reset"), "{refused}");
    // The admin (system:masters) and a ServiceAccount bound to system:kubelet-api-admin may.
    let admin = credentials_of(&env.kubeconfig);
    assert_eq!(kubelet_get(&env, quiet_logs, Some(&admin), None).unwrap(), (200, "from-quiet\n".to_owned()));
    env.kubectl(&["create", "serviceaccount", "reader"]);
    env.kubectl(&["create", "clusterrolebinding", "reader-kubelet", "--clusterrole=system:kubelet-api-admin", "--serviceaccount=default:reader"]);
    let token = env.kubectl(&["create", "token", "reader"]);
    assert_eq!(kubelet_get(&env, "/healthz", None, Some(token.trim())).unwrap(), (200, "ok".to_owned()));

    // A serving request for addresses that are not the node's is denied.
    let (csr_pem, _key) = coxswain_auth::pki::new_serving_csr(
        &format!("system:node:{node}"),
        &["system:nodes"],
        vec![],
        vec![env.veth.a_addr.parse().unwrap()],
    )
    .unwrap();
    let forged = json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": "forged-serving"},
        "spec": {
            "request": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, csr_pem),
            "signerName": "kubernetes.io/kubelet-serving",
            "usages": ["digital signature", "key encipherment", "server auth"],
        },
    });
    let node_kubectl = |args: &[&str], stdin: Option<&str>| {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", env.veth.a.name()))
            .arg(Path::new(&std::env::var("COXSWAIN_VENV").unwrap_or_else(|_| "/opt/coxswain/venv".into())).join("bin/kubectl"))
            .arg("--kubeconfig")
            .arg(&env.node_kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(text) = stdin {
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    };
    let created = node_kubectl(&["create", "-f", "-"], Some(&forged.to_string()));
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let deadline = Instant::now() + Duration::from_secs(30);
    let denied = loop {
        let csr = env.get("certificatesigningrequest", "forged-serving").unwrap();
        if condition(&csr, "Denied") == Some("True") {
            break csr;
        }
        assert!(condition(&csr, "Approved").is_none(), "a serving CSR for another address was approved: {csr}");
        assert!(Instant::now() < deadline, "the forged serving CSR was never denied: {csr}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let message = denied["status"]["conditions"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("are not addresses of node {node}")), "{message}");
    assert!(denied["status"]["certificate"].is_null());

    // A restarted kubelet serves with the certificate it kept: no new request.
    env.stop_agent();
    env.start_agent();
    let again = env.wait_serving();
    assert_eq!(again, first_cert);
    assert_eq!(kubelet_get(&env, quiet_logs, Some(&admin), None).unwrap().0, 200);
    let csrs: Value = serde_json::from_str(&env.kubectl(&["get", "certificatesigningrequests", "-o", "json"])).unwrap();
    let serving = csrs["items"].as_array().unwrap().iter().filter(|c| c["spec"]["signerName"] == "kubernetes.io/kubelet-serving").count();
    assert_eq!(serving, 2, "only the forged request was added: {csrs}");
}

/// A stand-in for a kubelet on the node's address and port: TLS with `cert`, answering
/// every request with 200 `fake-kubelet`, recording the client certificates' names.
struct FakeKubelet {
    seen: std::sync::Arc<Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeKubelet {
    fn start(env: &KubeletEnv, issued: &coxswain_auth::pki::Issued) -> FakeKubelet {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der(env)).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(std::sync::Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .unwrap();
        let config = std::sync::Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(coxswain_auth::pki::certs_der(&issued.cert_pem).unwrap(), rustls_key(&issued.key_pem))
                .unwrap(),
        );
        let addr = format!("{}:10250", env.veth.b_addr);
        let listener = env.veth.b.run_in(|| Ok(std::net::TcpListener::bind(&addr)?)).expect("bind the fake kubelet");
        listener.set_nonblocking(true).unwrap();
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
                let Ok((tcp, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = tcp.set_nonblocking(false);
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                let mut tls = rustls::StreamOwned::new(rustls::ServerConnection::new(config.clone()).unwrap(), tcp);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                if !head.ends_with(b"\r\n\r\n") {
                    continue; // the client refused the handshake
                }
                let who = tls
                    .conn
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|der| coxswain_auth::pki::CertInfo::from_der(der).ok())
                    .map(|i| i.common_name)
                    .unwrap_or_default();
                seen2.lock().unwrap().push(who);
                let _ = std::io::Write::write_all(&mut tls, b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\nconnection: close\r\n\r\nfake-kubelet\n");
                let _ = std::io::Write::flush(&mut tls);
                tls.conn.send_close_notify();
                let _ = std::io::Write::flush(&mut tls);
            }
        });
        FakeKubelet { seen, stop, thread: Some(thread) }
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn the_api_server_verifies_the_kubelets_certificate_and_presents_its_own() {
    let _serial = serial();
    let mut env = KubeletEnv::start(32, EnvOptions { pod_cidr_flag: true });
    let node = env.node_name.clone();
    env.wait_serving();
    // The node stays registered with its address; a pod bound to it is enough to proxy.
    env.stop_agent();
    env.apply(&pod("target", &node, json!({"containers": [sh("c", "sleep 1")]})));
    let ca = coxswain_auth::pki::CertificateAuthority::load_or_create(&env.control_plane_dir().join("pki")).unwrap();
    let node_ip: std::net::IpAddr = env.veth.b_addr.parse().unwrap();
    let serving = |ca: &coxswain_auth::pki::CertificateAuthority, ip: std::net::IpAddr| {
        ca.issue(&coxswain_auth::pki::CertRequest::server(format!("system:node:{node}"), vec![], vec![ip])).unwrap()
    };

    // A kubelet with a CA-signed certificate for the node's address is reached, and the API
    // server shows it its own identity.
    {
        let fake = FakeKubelet::start(&env, &serving(&ca, node_ip));
        assert_eq!(env.kubectl(&["logs", "target"]), "fake-kubelet\n");
        assert_eq!(*fake.seen.lock().unwrap(), vec!["kube-apiserver-kubelet-client".to_owned()]);
    }
    // Signed by the CA but for another address: refused.
    {
        let fake = FakeKubelet::start(&env, &serving(&ca, env.veth.a_addr.parse().unwrap()));
        let out = env.kubectl_raw(&["logs", "target"], None);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("certificate") && err.contains("not valid for"), "{err}");
        assert!(fake.seen.lock().unwrap().is_empty(), "a request reached the wrong kubelet");
    }
    // For the right address but not signed by the cluster CA: refused.
    {
        let rogue = coxswain_auth::pki::CertificateAuthority::generate("rogue").unwrap();
        let fake = FakeKubelet::start(&env, &serving(&rogue, node_ip));
        let out = env.kubectl_raw(&["logs", "target"], None);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("UnknownIssuer") || err.contains("unknown issuer"), "{err}");
        assert!(fake.seen.lock().unwrap().is_empty(), "a request reached a kubelet the CA did not sign");
    }
}

#[test]
fn exec_with_a_terminal_attach_and_run_interactively() {
    let _serial = serial();
    let env = KubeletEnv::start(33, EnvOptions { pod_cidr_flag: true });
    let node = env.node_name.clone();
    env.apply(&pod("shell", &node, json!({"terminationGracePeriodSeconds": 1, "containers": [sh("c", "exec sleep 3600")]})));
    let mut reader = sh("reader", "while read line; do echo got:$line; done");
    reader["stdin"] = json!(true);
    env.apply(&pod("reader", &node, json!({"terminationGracePeriodSeconds": 1, "containers": [reader]})));
    env.wait_ready("shell");
    env.wait_ready("reader");
    env.wait_serving();

    // exec -it: a real terminal, of our terminal's size, following its resizes.
    let mut term = env.kubectl_pty(&["exec", "-it", "shell", "--", "sh", "-c", "tty; while read l; do [ \"$l\" = q ] && exit 5; echo size=$(stty size 2>&1); done"]);
    let shown = term.wait_for("/dev/pts/", Duration::from_secs(30));
    assert!(!shown.contains("not a tty"), "{shown}");
    // Sizes travel on their own channel and apply once the process runs (containerd starts
    // it with no size): type lines until the shell reports the size.
    let size_shows = |term: &mut coxswain_tests::kubelet_env::PtyKubectl, size: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !term.output().contains(&format!("size={size}")) {
            assert!(Instant::now() < deadline, "the container's terminal never had size {size}: {}", term.output());
            term.send("\r");
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    size_shows(&mut term, "24 80");
    term.resize(40, 100);
    size_shows(&mut term, "40 100");
    term.send("q\r");
    assert_eq!(term.wait_exit(Duration::from_secs(20)), Some(5), "{}", term.output());
    drop(term);

    // attach -i: the container's own stdin and stdout.
    let kubectl = Path::new(&std::env::var("COXSWAIN_VENV").unwrap_or_else(|_| "/opt/coxswain/venv".into())).join("bin/kubectl");
    let mut attach = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", env.veth.a.name()))
        .arg(&kubectl)
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .args(["attach", "-i", "reader"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = attach.stdin.take().unwrap();
    let mut stdout = attach.stdout.take().unwrap();
    let seen = std::thread::spawn(move || {
        let mut seen = String::new();
        let mut buf = [0u8; 256];
        while !seen.contains("got:second") {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        seen
    });
    // Lines typed before the session is up are not lost: they wait in kubectl's pipe.
    std::io::Write::write_all(&mut stdin, b"first\nsecond\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.is_finished() {
        assert!(Instant::now() < deadline, "attach showed nothing");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = attach.kill();
    let out = attach.wait_with_output().unwrap();
    let seen = seen.join().unwrap();
    assert!(seen.contains("got:first\ngot:second"), "attach gave {seen:?}; stderr: {}", String::from_utf8_lossy(&out.stderr));

    // run -it: a pod with stdin and a terminal, attached as soon as it runs.
    let mut run = env.kubectl_pty(&[
        "run", "-it", "interactive", &format!("--image={BUSYBOX}"), "--image-pull-policy=IfNotPresent",
        "--restart=Never", &format!("--overrides={}", json!({"spec": {"nodeName": node}})), "--", "sh",
    ]);
    // kubectl attaches once the pod runs; what is typed then reaches the shell.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run.output().contains("sum=5") {
        assert!(Instant::now() < deadline, "kubectl run -it never reached a shell: {}", run.output());
        run.send("echo sum=$((2+3))\r");
        std::thread::sleep(Duration::from_millis(500));
    }
    run.send("exit\r");
    run.wait_exit(Duration::from_secs(30));
    let done = env.wait_pod("interactive", "Succeeded", Duration::from_secs(30), |p| p["status"]["phase"] == "Succeeded");
    assert_eq!(container_status(&done, "interactive")["state"]["terminated"]["exitCode"], 0);
}
