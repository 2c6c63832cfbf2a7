//! The real kubectl (v1.37) against an in-process API server, on the embedded store and on a
//! single-member etcd: what a user types, and what they see.

mod common;

use anyhow::{Context, Result, ensure};
use common::{Backend, StoreHandle, TestServer};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.25
        ports:
        - containerPort: 80
        env:
        - {name: A, value: "1"}
      - name: sidecar
        image: envoy:1
"#;

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: on-n1, labels: {app: db, tier: back}}
spec:
  nodeName: n1
  containers: [{name: c, image: busybox:1.36}]
---
apiVersion: v1
kind: Pod
metadata: {name: unscheduled, labels: {app: web, tier: front}}
spec:
  containers: [{name: c, image: busybox}]
"#;

async fn workflow(backend: Backend) -> Result<()> {
    let store = StoreHandle::open(backend).await?;
    let server = TestServer::start(store.store.clone()).await?;

    let version = server.kubectl(&["version"]).await?;
    ensure!(version.contains("Server Version: v1.37"), "{version}");
    let resources = server.kubectl(&["api-resources"]).await?;
    for needle in [
        "deployments",
        "deploy",
        "apps/v1",
        "pods",
        "po",
        "endpointslices",
        "leases",
        "clusterrolebindings",
    ] {
        ensure!(
            resources.contains(needle),
            "api-resources lacks {needle}:\n{resources}"
        );
    }

    // apply: created, unchanged, configured; generation follows spec changes only.
    ensure!(
        server
            .apply(DEPLOYMENT, &[])
            .await?
            .contains("deployment.apps/web created")
    );
    ensure!(
        server
            .apply(DEPLOYMENT, &[])
            .await?
            .contains("deployment.apps/web unchanged")
    );
    let changed = DEPLOYMENT.replace("replicas: 2", "replicas: 3");
    ensure!(
        server
            .apply(&changed, &[])
            .await?
            .contains("deployment.apps/web configured")
    );
    let got = server
        .kubectl(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.replicas} {.metadata.generation} {.spec.strategy.type}",
        ])
        .await?;
    ensure!(got == "3 2 RollingUpdate", "{got}");

    // Output formats.
    let wide = server
        .kubectl(&["get", "deployments", "-o", "wide"])
        .await?;
    let header = wide.lines().next().unwrap_or_default();
    for col in [
        "NAME",
        "READY",
        "UP-TO-DATE",
        "AVAILABLE",
        "AGE",
        "CONTAINERS",
        "IMAGES",
        "SELECTOR",
    ] {
        ensure!(header.contains(col), "wide header lacks {col}: {wide}");
    }
    ensure!(
        wide.contains("nginx,sidecar") && wide.contains("app=web"),
        "{wide}"
    );
    let yaml = server
        .kubectl(&["get", "deploy", "web", "-o", "yaml"])
        .await?;
    ensure!(
        yaml.contains("kind: Deployment") && yaml.contains("progressDeadlineSeconds: 600"),
        "{yaml}"
    );
    let json: Value = serde_json::from_str(
        &server
            .kubectl(&["get", "deploy", "web", "-o", "json"])
            .await?,
    )?;
    ensure!(json["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent");
    ensure!(
        server
            .kubectl(&["get", "deploy", "-o", "name"])
            .await?
            .trim()
            == "deployment.apps/web"
    );

    // label, annotate, selectors.
    server
        .kubectl(&["label", "deploy", "web", "tier=front"])
        .await?;
    server
        .kubectl(&["annotate", "deploy", "web", "note=hello"])
        .await?;
    ensure!(
        server
            .kubectl(&[
                "get",
                "deploy",
                "-l",
                "tier in (front,back),app",
                "-o",
                "name"
            ])
            .await?
            .trim()
            == "deployment.apps/web"
    );
    let none = server
        .kubectl_with_input(&["get", "deploy", "-l", "tier=back"], None)
        .await?;
    ensure!(String::from_utf8_lossy(&none.stderr).contains("No resources found"));
    let note = server
        .kubectl(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.annotations.note}",
        ])
        .await?;
    ensure!(note == "hello", "{note}");

    // patch: merge, json, strategic (containers merge by name, env by name).
    server
        .kubectl(&[
            "patch",
            "deploy",
            "web",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"replicas":4}}"#,
        ])
        .await?;
    server
        .kubectl(&[
            "patch",
            "deploy",
            "web",
            "--type",
            "json",
            "-p",
            r#"[{"op":"replace","path":"/spec/replicas","value":5}]"#,
        ])
        .await?;
    server
        .kubectl(&["patch", "deploy", "web", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.26","env":[{"name":"B","value":"2"}]}]}}}}"#])
        .await?;
    let got = server
        .kubectl(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[*].name} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].env[*].name}"])
        .await?;
    ensure!(got == "5 nginx sidecar nginx:1.26 A B", "{got}");

    // scale through the scale subresource.
    ensure!(
        server
            .kubectl(&["scale", "deploy", "web", "--replicas=1"])
            .await?
            .contains("scaled")
    );
    ensure!(
        server
            .kubectl(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"])
            .await?
            == "1"
    );

    // Pods: table columns, field selectors.
    server.apply(PODS, &[]).await?;
    let pods = server.kubectl(&["get", "pods"]).await?;
    ensure!(
        pods.lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{pods}"
    );
    ensure!(pods.contains("0/1") && pods.contains("Pending"), "{pods}");
    let wide = server.kubectl(&["get", "pods", "-o", "wide"]).await?;
    ensure!(wide.contains("NODE") && wide.contains("n1"), "{wide}");
    ensure!(
        server
            .kubectl(&[
                "get",
                "pods",
                "--field-selector",
                "spec.nodeName=n1",
                "-o",
                "name"
            ])
            .await?
            .trim()
            == "pod/on-n1"
    );
    let pending = server
        .kubectl(&[
            "get",
            "pods",
            "--field-selector",
            "status.phase=Pending,metadata.name!=on-n1",
            "-o",
            "name",
        ])
        .await?;
    ensure!(pending.trim() == "pod/unscheduled", "{pending}");
    let err = server
        .kubectl_fails(&["get", "pods", "--field-selector", "spec.bogus=x"])
        .await?;
    ensure!(err.contains("field label not supported"), "{err}");

    // Services get cluster IPs and node ports.
    server
        .apply("apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: NodePort\n  selector: {app: web}\n  ports: [{port: 80}]\n", &[])
        .await?;
    let svc = server
        .kubectl(&[
            "get",
            "svc",
            "web",
            "-o",
            "jsonpath={.spec.clusterIP} {.spec.ports[0].nodePort} {.spec.ports[0].targetPort}",
        ])
        .await?;
    let parts: Vec<&str> = svc.split(' ').collect();
    ensure!(
        parts.len() == 3 && parts[0].starts_with("10.") && parts[2] == "80",
        "{svc}"
    );
    let port: u16 = parts[1].parse()?;
    ensure!((30000..=32767).contains(&port), "{svc}");

    // Server-side apply creates, then updates, and records the field manager.
    let ssa = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {a: '1'}\n";
    ensure!(
        server
            .apply(ssa, &["--server-side"])
            .await?
            .contains("serverside-applied")
    );
    ensure!(
        server
            .apply(&ssa.replace("'1'", "'2'"), &["--server-side"])
            .await?
            .contains("serverside-applied")
    );
    let got = server
        .kubectl(&["get", "cm", "ssa", "-o", "jsonpath={.data.a} {.metadata.managedFields[0].manager} {.metadata.managedFields[0].operation}"])
        .await?;
    ensure!(got == "2 kubectl Apply", "{got}");

    // delete (the unscheduled pod goes at once; the bound one waits for its kubelet).
    ensure!(
        server
            .kubectl(&["delete", "deploy", "web"])
            .await?
            .contains("deleted")
    );
    let err = server.kubectl_fails(&["get", "deploy", "web"]).await?;
    ensure!(
        err.contains("NotFound") && err.contains("deployments.apps \"web\" not found"),
        "{err}"
    );
    server.kubectl(&["delete", "pod", "unscheduled"]).await?;
    server
        .kubectl(&["delete", "pod", "on-n1", "--wait=false"])
        .await?;
    let status = server
        .kubectl(&[
            "get",
            "pod",
            "on-n1",
            "-o",
            "jsonpath={.metadata.deletionGracePeriodSeconds}",
        ])
        .await?;
    ensure!(
        status == "30",
        "graceful deletion keeps the pod for its grace period: {status}"
    );
    server
        .kubectl(&["delete", "pod", "on-n1", "--grace-period=0", "--force"])
        .await?;
    server.kubectl_fails(&["get", "pod", "on-n1"]).await?;
    Ok(())
}

async fn namespaces(backend: Backend) -> Result<()> {
    let store = StoreHandle::open(backend).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {k: v}\n";
    let err = server
        .apply(cm, &["-n", "missing"])
        .await
        .err()
        .context("apply into a missing namespace")?;
    ensure!(
        err.to_string().contains("namespaces \"missing\" not found"),
        "{err}"
    );

    // A namespace held by a finalizer stays Terminating and refuses new content.
    server
        .apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: held, finalizers: [example.com/hold]}\n", &[])
        .await?;
    server.apply(cm, &["-n", "held"]).await?;
    server
        .kubectl(&["delete", "ns", "held", "--wait=false"])
        .await?;
    let phase = server
        .kubectl(&["get", "ns", "held", "-o", "jsonpath={.status.phase}"])
        .await?;
    ensure!(phase == "Terminating", "{phase}");
    let err = server
        .apply(&cm.replace("name: c", "name: d"), &["-n", "held"])
        .await
        .err()
        .context("apply into a terminating namespace")?;
    ensure!(
        err.to_string().contains("because it is being terminated"),
        "{err}"
    );
    // Its content is deleted; releasing the finalizer lets it go.
    server
        .kubectl(&[
            "wait",
            "--for=delete",
            "configmap/c",
            "-n",
            "held",
            "--timeout=20s",
        ])
        .await?;
    server
        .kubectl(&[
            "patch",
            "ns",
            "held",
            "--type",
            "json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ])
        .await?;
    server
        .kubectl(&["wait", "--for=delete", "namespace/held", "--timeout=20s"])
        .await?;

    // A plain namespace deletes with its content, and kubectl waits for that.
    server
        .apply(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n",
            &[],
        )
        .await?;
    server.apply(cm, &["-n", "team"]).await?;
    server
        .kubectl(&["delete", "ns", "team", "--timeout=20s"])
        .await?;
    server.kubectl_fails(&["get", "ns", "team"]).await?;
    let names = server.kubectl(&["get", "ns", "-o", "name"]).await?;
    for ns in coxswain_apiserver::BUILTIN_NAMESPACES {
        ensure!(names.contains(&format!("namespace/{ns}")), "{names}");
    }
    Ok(())
}

const SSA_DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ssa
  labels: {app: ssa, tier: front, team: a}
spec:
  replicas: 2
  selector:
    matchLabels: {app: ssa}
  template:
    metadata:
      labels: {app: ssa}
    spec:
      containers:
      - name: app
        image: nginx:1
      - name: sidecar
        image: envoy:1
"#;

/// The deployment `ssa` as JSON, managed fields included.
async fn get_ssa(server: &TestServer) -> Result<Value> {
    let text = server
        .kubectl(&["get", "deploy", "ssa", "-o", "json", "--show-managed-fields"])
        .await?;
    Ok(serde_json::from_str(&text)?)
}

/// The managed fields entries of an object, as `(manager, operation, subresource)`.
fn owners(obj: &Value) -> Vec<(String, String, String)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let s = |f: &str| e[f].as_str().unwrap_or_default().to_owned();
            (s("manager"), s("operation"), s("subresource"))
        })
        .collect()
}

/// The `fieldsV1` of `manager`'s entry with `operation`.
fn fields_of<'a>(obj: &'a Value, manager: &str, operation: &str) -> Option<&'a Value> {
    obj["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager && e["operation"] == operation)
        .map(|e| &e["fieldsV1"])
}

/// `kubectl apply --server-side` as users run it: ownership, conflicts with `kubectl scale`,
/// `--force-conflicts`, fields dropped from the file, a second applier, status writers.
async fn server_side_apply(backend: Backend) -> Result<()> {
    let store = StoreHandle::open(backend).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let ssa = |manifest: String, extra: &'static [&'static str]| {
        let server = &server;
        async move {
            let mut args = vec!["apply", "--server-side", "-f", "-"];
            args.extend_from_slice(extra);
            server.kubectl_with_input(&args, Some(&manifest)).await
        }
    };

    let out = ssa(SSA_DEPLOYMENT.to_owned(), &[]).await?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("deployment.apps/ssa serverside-applied"),
        "{out:?}"
    );
    let obj = get_ssa(&server).await?;
    ensure!(owners(&obj) == [("kubectl".into(), "Apply".into(), String::new())], "{obj}");
    let applied = fields_of(&obj, "kubectl", "Apply").context("kubectl's entry")?;
    ensure!(applied["f:spec"]["f:replicas"] == serde_json::json!({}), "{applied}");
    ensure!(
        applied["f:spec"]["f:template"]["f:spec"]["f:containers"]
            .get(r#"k:{"name":"sidecar"}"#)
            .is_some(),
        "{applied}"
    );
    // The same file again writes nothing.
    let rv = obj["metadata"]["resourceVersion"].clone();
    ensure!(ssa(SSA_DEPLOYMENT.to_owned(), &[]).await?.status.success());
    ensure!(get_ssa(&server).await?["metadata"]["resourceVersion"] == rv);

    // kubectl scale owns .spec.replicas through the scale subresource (kubectl 1.37 sends
    // no fieldManager there: the manager is its User-Agent's, "kubectl").
    server.kubectl(&["scale", "deploy", "ssa", "--replicas=5"]).await?;
    let scaled = get_ssa(&server).await?;
    ensure!(
        owners(&scaled).contains(&("kubectl".into(), "Update".into(), "scale".into())),
        "{scaled}"
    );
    // Applying another count conflicts, names the field and its owner, and changes nothing.
    let three = SSA_DEPLOYMENT.replace("replicas: 2", "replicas: 3");
    let out = ssa(three.clone(), &[]).await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "the apply must fail: {err}");
    ensure!(
        err.contains(
            r#"Apply failed with 1 conflict: conflict with "kubectl" with subresource "scale" using apps/v1: .spec.replicas"#
        ),
        "{err}"
    );
    ensure!(err.contains("--force-conflicts"), "kubectl explains the way out: {err}");
    let after = get_ssa(&server).await?;
    ensure!(after["spec"]["replicas"] == 5, "{after}");
    ensure!(after["metadata"]["resourceVersion"] == scaled["metadata"]["resourceVersion"]);
    // --force-conflicts takes the field over.
    ensure!(ssa(three.clone(), &["--force-conflicts"]).await?.status.success());
    let forced = get_ssa(&server).await?;
    ensure!(forced["spec"]["replicas"] == 3, "{forced}");
    ensure!(
        !owners(&forced).iter().any(|(_, _, sub)| sub == "scale"),
        "the scale entry lost its only field: {forced}"
    );

    // A second applier setting the same value shares the field without a conflict...
    let other = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: ssa\n  labels: {team: a}\n";
    let out = ssa(other.to_owned(), &["--field-manager", "other"]).await?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // ...and keeps it when the first applier drops it; what the first alone owned goes:
    // a label and a container removed from the file disappear.
    let trimmed = three
        .replace("labels: {app: ssa, tier: front, team: a}", "labels: {app: ssa}")
        .replace("      - name: sidecar\n        image: envoy:1\n", "");
    ensure!(ssa(trimmed.clone(), &[]).await?.status.success());
    let obj = get_ssa(&server).await?;
    ensure!(
        obj["metadata"]["labels"] == serde_json::json!({"app": "ssa", "team": "a"}),
        "{obj}"
    );
    let containers: Vec<&str> = obj["spec"]["template"]["spec"]["containers"]
        .as_array()
        .context("containers")?
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    ensure!(containers == ["app"], "{obj}");
    ensure!(
        fields_of(&obj, "other", "Apply").context("other's entry")?["f:metadata"]["f:labels"]
            == serde_json::json!({"f:team": {}}),
        "{obj}"
    );

    // Status writes own status fields only and never conflict with the spec's applier.
    server
        .kubectl(&[
            "patch", "deploy", "ssa", "--subresource=status", "--type=merge", "-p",
            r#"{"status":{"replicas":3,"observedGeneration":1}}"#,
        ])
        .await?;
    let obj = get_ssa(&server).await?;
    ensure!(
        owners(&obj).contains(&("kubectl-patch".into(), "Update".into(), "status".into())),
        "{obj}"
    );
    let changed = trimmed.replace("nginx:1", "nginx:2");
    let out = ssa(changed, &[]).await?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let obj = get_ssa(&server).await?;
    ensure!(obj["status"]["replicas"] == 3, "{obj}");
    ensure!(
        owners(&obj).contains(&("kubectl-patch".into(), "Update".into(), "status".into())),
        "{obj}"
    );

    // Deleting and recreating starts afresh.
    server.kubectl(&["delete", "deploy", "ssa"]).await?;
    ensure!(ssa(SSA_DEPLOYMENT.to_owned(), &[]).await?.status.success());
    let obj = get_ssa(&server).await?;
    ensure!(owners(&obj) == [("kubectl".into(), "Apply".into(), String::new())], "{obj}");
    Ok(())
}

macro_rules! on_both_backends {
    ($($name:ident),*) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::Backend::Embedded).await
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::Backend::Etcd).await
                }
            )*
        }
    };
}

/// `kubectl edit` through an editor script (as a user's `$EDITOR` would change the
/// object), an edit the server refuses (nothing stored changes, the editor's copy is
/// kept), and `kubectl describe` reading the object and its events.
async fn edit_and_describe(backend: Backend) -> Result<()> {
    let store = StoreHandle::open(backend).await?;
    let server = TestServer::start(store.store.clone()).await?;
    server.apply(DEPLOYMENT, &[]).await?;
    let dir = tempfile::tempdir()?;
    let editor = |name: &str, sed: &str| -> Result<std::path::PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().join(name);
        // Keeps what kubectl showed it, then edits.
        let seen = dir.path().join(format!("{name}.seen"));
        std::fs::write(
            &path,
            format!("#!/bin/sh\ncat \"$1\" >> '{}'\nexec sed -i '{sed}' \"$1\"\n", seen.display()),
        )?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(path)
    };
    let scale_up = editor("scale-up", "s/replicas: 2/replicas: 4/")?;
    let out = server
        .kubectl_with_env(&["edit", "deploy", "web"], None, &[("KUBE_EDITOR", scale_up.as_os_str())])
        .await?;
    ensure!(out.status.success(), "edit failed: {}", String::from_utf8_lossy(&out.stderr));
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("deployment.apps/web edited"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let got = server
        .kubectl(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas} {.metadata.generation}"])
        .await?;
    ensure!(got == "4 2", "{got}");
    let before = server
        .kubectl(&["get", "deploy", "web", "-o", "jsonpath={.metadata.resourceVersion}"])
        .await?;

    // An invalid edit: refused, nothing stored; kubectl reopens the editor with the
    // server's causes in the file's header, naming the field.
    let break_it = editor("break", "s/replicas: 4/replicas: -3/")?;
    let out = server
        .kubectl_with_env(&["edit", "deploy", "web"], None, &[("KUBE_EDITOR", break_it.as_os_str())])
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "an invalid edit succeeded");
    ensure!(stderr.contains(r#"deployments.apps "web" is invalid"#), "{stderr}");
    let shown = std::fs::read_to_string(dir.path().join("break.seen"))?;
    ensure!(
        shown.contains("spec.replicas: Invalid value: -3"),
        "the reopened file does not name the field:\n{shown}"
    );
    let after = server
        .kubectl(&["get", "deploy", "web", "-o", "jsonpath={.metadata.resourceVersion} {.spec.replicas}"])
        .await?;
    ensure!(after == format!("{before} 4"), "the refused edit changed the object: {after}");

    let described = server.kubectl(&["describe", "deploy", "web"]).await?;
    for needle in ["Name:", "web", "Replicas:", "4 desired", "StrategyType:", "RollingUpdate", "nginx:1.25", "envoy:1"] {
        ensure!(described.contains(needle), "describe lacks {needle:?}:\n{described}");
    }
    let described = server.kubectl(&["describe", "ns", "default"]).await?;
    ensure!(described.contains("Status:") && described.contains("Active"), "{described}");
    Ok(())
}

on_both_backends!(workflow, namespaces, server_side_apply, edit_and_describe);

/// `kubectl get -w` prints the current object, then a later change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_sees_a_later_change() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    server
        .apply(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: watched}\ndata: {k: v}\n",
            &[],
        )
        .await?;
    let mut child = tokio::process::Command::new(common::kubectl_path())
        .args(["--kubeconfig"])
        .arg(&server.kubeconfig)
        .args(["get", "configmaps", "-w", "--output-watch-events"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut next = async || -> Result<String> {
        tokio::time::timeout(common::STEP, lines.next_line())
            .await
            .context("kubectl get -w printed nothing in time")??
            .context("kubectl get -w ended")
    };
    let header = next().await?;
    ensure!(
        header.contains("EVENT") && header.contains("NAME") && header.contains("DATA"),
        "{header}"
    );
    let first = next().await?;
    ensure!(
        first.contains("ADDED") && first.contains("watched"),
        "{first}"
    );
    server
        .kubectl(&["label", "configmap", "watched", "changed=yes"])
        .await?;
    let second = next().await?;
    ensure!(
        second.contains("MODIFIED") && second.contains("watched"),
        "{second}"
    );
    server.kubectl(&["delete", "configmap", "watched"]).await?;
    let third = next().await?;
    ensure!(
        third.contains("DELETED") && third.contains("watched"),
        "{third}"
    );
    child.kill().await?;
    Ok(())
}

/// `kubectl explain` reads the OpenAPI v3 documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_reads_openapi() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let out = server
        .kubectl(&["explain", "deployment.spec.replicas"])
        .await?;
    ensure!(
        out.contains("KIND:       Deployment") && out.contains("replicas <integer>"),
        "{out}"
    );
    let out = server
        .kubectl(&["explain", "pods.spec.containers.image"])
        .await?;
    ensure!(out.contains("image <string>"), "{out}");
    // Client-side validation defers to the server (fieldValidation=Strict).
    let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {k: v}\nbogus: 1\n";
    let err = server
        .apply(bad, &[])
        .await
        .err()
        .context("apply with an unknown field")?;
    ensure!(err.to_string().contains("unknown field \"bogus\""), "{err}");
    ensure!(
        server
            .apply(bad, &["--validate=false"])
            .await?
            .contains("created")
    );
    Ok(())
}

