//! Joining a node as kubeadm users know it, with the real binaries: `coxctl token create`
//! prints the command, `coxswain-node-agent join` pins the CA by hash, authenticates with
//! the bootstrap token, gets its own certificate through a CertificateSigningRequest the
//! control plane approves and signs, and writes the node's kubeconfig.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use coxswain_tests::workspace_bin;
use serde_json::Value;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kubectl_path() -> PathBuf {
    std::env::var_os("COXSWAIN_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/coxswain/venv"))
        .join("bin/kubectl")
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run a command")
}

fn kubectl(home: &Path, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(kubectl_path());
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args).env("HOME", home);
    match stdin {
        None => run(&mut cmd),
        Some(text) => {
            use std::io::Write;
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start kubectl");
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            child.wait_with_output().expect("kubectl output")
        }
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The counter `apiserver_authentication_attempts_total{result="<result>"}`.
fn auth_attempts(home: &Path, admin: &Path, result: &str) -> u64 {
    let out = kubectl(home, admin, &["get", "--raw", "/metrics"], None);
    assert!(out.status.success(), "{}", text(&out));
    let metrics = String::from_utf8_lossy(&out.stdout).into_owned();
    let prefix = format!("apiserver_authentication_attempts_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap_or(0))
        .unwrap_or(0)
}

fn join(args: &[&str], node: &str, out: &Path) -> Output {
    run(Command::new(workspace_bin("coxswain-node-agent"))
        .arg("join")
        .args(args)
        .args(["--join-only", "--node-name", node, "--kubeconfig"])
        .arg(out))
}

#[test]
fn a_node_joins_with_a_bootstrap_token_and_a_pinned_ca() {
    let data = tempfile::tempdir().expect("tempdir");
    let home = data.path();
    let port = free_port();
    let _control_plane = Proc(
        Command::new(workspace_bin("coxswain-control-plane"))
            .arg("--data-dir")
            .arg(data.path())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--components-metrics-listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the control plane"),
    );
    let admin = data.path().join("admin.kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !admin.exists() {
        assert!(Instant::now() < deadline, "the control plane did not write its kubeconfig");
        std::thread::sleep(Duration::from_millis(50));
    }

    let created = run(Command::new(workspace_bin("coxctl"))
        .arg("--kubeconfig")
        .arg(&admin)
        .args(["token", "create", "--ttl", "10m", "--description", "join test"])
        .env("HOME", home));
    assert!(created.status.success(), "{}", text(&created));
    let line = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&words[..2], ["coxswain-node-agent", "join"], "{line}");
    assert_eq!(words[2], format!("https://127.0.0.1:{port}"));
    let (token, hash) = (words[4], words[6]);
    assert!(hash.starts_with("sha256:") && hash.len() == 71, "{line}");

    // A wrong hash stops the join before any credential is sent.
    let out_path = data.path().join("n9.kubeconfig");
    let wrong = format!("sha256:{}", "0".repeat(64));
    let refused = join(&[words[2], "--token", token, "--discovery-token-ca-cert-hash", &wrong], "n9", &out_path);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("does not match --discovery-token-ca-cert-hash"), "{}", text(&refused));
    assert!(!out_path.exists());
    assert_eq!(auth_attempts(home, &admin, "bootstrap_token"), 0, "the token reached the server");

    // The right hash: the node gets its own identity.
    let joined = join(&[words[2], "--token", token, "--discovery-token-ca-cert-hash", hash], "n9", &out_path);
    assert!(joined.status.success(), "{}", text(&joined));
    assert!(auth_attempts(home, &admin, "bootstrap_token") > 0);
    let review = "apiVersion: authentication.k8s.io/v1\nkind: SelfSubjectReview\nmetadata: {name: me}\n";
    let who = kubectl(home, &out_path, &["create", "-f", "-", "-o", "json"], Some(review));
    assert!(who.status.success(), "{}", text(&who));
    let who: Value = serde_json::from_slice(&who.stdout).expect("a SelfSubjectReview");
    assert_eq!(who["status"]["userInfo"]["username"], "system:node:n9");
    assert!(who["status"]["userInfo"]["groups"].as_array().unwrap().contains(&"system:nodes".into()), "{who}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&out_path).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "the node's key is readable by others");

    // The request is on record: who asked, and that it was approved automatically.
    let csrs = kubectl(home, &admin, &["get", "certificatesigningrequests", "-o", "json"], None);
    let csrs: Value = serde_json::from_slice(&csrs.stdout).expect("CSR list");
    let csr = &csrs["items"][0];
    assert_eq!(csr["spec"]["username"], format!("system:bootstrap:{}", &token[..6]));
    assert_eq!(csr["status"]["conditions"][0]["reason"], "AutoApproved", "{csr}");

    // Tokens are listed and deleted; a deleted token no longer joins anyone.
    let list = run(Command::new(workspace_bin("coxctl")).arg("--kubeconfig").arg(&admin).args(["token", "list"]).env("HOME", home));
    assert!(text(&list).contains(token) && text(&list).contains("join test"), "{}", text(&list));
    let deleted = run(Command::new(workspace_bin("coxctl")).arg("--kubeconfig").arg(&admin).args(["token", "delete", &token[..6]]).env("HOME", home));
    assert!(deleted.status.success(), "{}", text(&deleted));
    let other = data.path().join("n10.kubeconfig");
    let refused = join(&[words[2], "--token", token, "--discovery-token-ca-cert-hash", hash], "n10", &other);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("bootstrap token was refused"), "{}", text(&refused));
    // A node that has joined keeps its identity across restarts without the token.
    let again = join(&[words[2], "--token", token, "--discovery-token-ca-cert-hash", hash], "n9", &out_path);
    assert!(again.status.success(), "{}", text(&again));
}
