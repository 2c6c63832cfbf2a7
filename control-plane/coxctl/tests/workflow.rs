//! The `coxctl` binary against an in-process API server (`coxswain-sim`): what a user sees
//! (output lines, exit codes, messages naming the object and the field) and what changes on
//! the server.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use coxswain_sim::{SimCluster, SimNode, wait_for};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

/// What a `coxctl` run printed and how it exited.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Result<Run> {
        if self.code != 0 {
            bail!(
                "coxctl exited {}:\n{}{}",
                self.code,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

/// A temporary HOME (so no real ~/.kube/config is read) and the cluster's kubeconfig.
struct Env {
    home: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Env {
    fn new(cluster: &SimCluster) -> Result<Env> {
        Ok(Env {
            home: tempfile::tempdir()?,
            kubeconfig: cluster.kubeconfig_path().to_path_buf(),
        })
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_coxctl"));
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HOME", self.home.path())
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    async fn run(&self, args: &[&str]) -> Result<Run> {
        output(self.command(args), args).await
    }

    async fn run_with_stdin(&self, args: &[&str], input: &str) -> Result<Run> {
        use tokio::io::AsyncWriteExt;
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(input.as_bytes()).await?;
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .with_context(|| format!("coxctl {args:?} did not finish within 60 s"))??;
        Ok(Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.home.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

async fn output(mut cmd: tokio::process::Command, args: &[&str]) -> Result<Run> {
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .with_context(|| format!("coxctl {args:?} did not finish within 60 s"))??;
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

const APP: &str = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  color: blue
---
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
      - name: web
        image: registry.local/web:1
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: 8080
";

async fn running_pod(cluster: &SimCluster, name: &str, labels: Value) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "registry.local/app:1"}]},
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    wait_for(Duration::from_secs(30), || {
        let pods = pods.clone();
        async move {
            let pod = pods.get(name).await?;
            Ok(pod.status.and_then(|s| s.phase).as_deref() == Some("Running"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_prints_the_servers_columns_and_resolves_short_names() -> Result<()> {
    let cluster = SimCluster::start().await?;
    let _node = cluster.add_node(SimNode::new("n1")).await?;
    running_pod(&cluster, "web-1", json!({"app": "web"})).await?;
    running_pod(&cluster, "db-1", json!({"app": "db"})).await?;
    let env = Env::new(&cluster)?;

    let run = env.run(&["get", "po"]).await?.ok()?;
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        words(lines[0]),
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{}",
        run.stdout
    );
    assert_eq!(words(lines[1])[..4], ["db-1", "1/1", "Running", "0"]);
    assert_eq!(words(lines[2])[..4], ["web-1", "1/1", "Running", "0"]);
    // Columns are aligned: every row's STATUS starts where the header's does.
    let status_at = lines[0].find("STATUS").unwrap();
    assert!(
        lines[1..]
            .iter()
            .all(|l| l[status_at..].starts_with("Running")),
        "{}",
        run.stdout
    );

    // Selectors, other spellings of the type, TYPE/NAME and -o name.
    let run = env
        .run(&["get", "pods", "-l", "app=web", "-o", "name"])
        .await?
        .ok()?;
    assert_eq!(run.stdout, "pod/web-1\n");
    let run = env
        .run(&[
            "get",
            "Pod",
            "--field-selector",
            "metadata.name=db-1",
            "-o",
            "name",
        ])
        .await?
        .ok()?;
    assert_eq!(run.stdout, "pod/db-1\n");
    let run = env
        .run(&["get", "po", "-l", "app=db", "--no-headers"])
        .await?
        .ok()?;
    assert_eq!(
        words(&run.stdout)[..4],
        ["db-1", "1/1", "Running", "0"],
        "{}",
        run.stdout
    );
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
    let run = env.run(&["get", "pod/web-1"]).await?.ok()?;
    assert!(
        run.stdout.lines().nth(1).unwrap().starts_with("pod/web-1 "),
        "{}",
        run.stdout
    );

    // -o wide adds the server's priority-1 columns.
    let run = env.run(&["get", "po", "web-1", "-o", "wide"]).await?.ok()?;
    let header = words(run.stdout.lines().next().unwrap());
    assert!(
        header.contains(&"IP") && header.contains(&"NODE"),
        "{}",
        run.stdout
    );
    assert!(
        words(run.stdout.lines().nth(1).unwrap()).contains(&"n1"),
        "{}",
        run.stdout
    );

    // Cluster-scoped and all-namespaces.
    let run = env.run(&["get", "no"]).await?.ok()?;
    assert_eq!(
        words(run.stdout.lines().nth(1).unwrap())[..2],
        ["n1", "Ready"]
    );
    let run = env.run(&["get", "po", "-A"]).await?.ok()?;
    assert_eq!(
        words(run.stdout.lines().next().unwrap())[..2],
        ["NAMESPACE", "NAME"]
    );
    assert_eq!(
        words(run.stdout.lines().nth(1).unwrap())[..2],
        ["default", "db-1"]
    );

    // One object as YAML and JSON; a list as a List.
    let run = env.run(&["get", "po", "web-1", "-o", "yaml"]).await?.ok()?;
    let pod: Value = serde_yaml_ng::from_str(&run.stdout)?;
    assert_eq!(
        (pod["kind"].as_str(), pod["metadata"]["name"].as_str()),
        (Some("Pod"), Some("web-1"))
    );
    let run = env.run(&["get", "po", "-o", "json"]).await?.ok()?;
    let list: Value = serde_json::from_str(&run.stdout)?;
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(list["items"][0]["apiVersion"], "v1");

    // Several types at once: names carry their type.
    let run = env.run(&["get", "po,ns", "-o", "name"]).await?.ok()?;
    assert!(
        run.stdout.contains("pod/web-1\n") && run.stdout.contains("namespace/default\n"),
        "{}",
        run.stdout
    );

    // Errors.
    let run = env.run(&["get", "widgets"]).await?;
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "error: the server doesn't have a resource type \"widgets\"\n"
        )
    );
    let run = env.run(&["get", "po", "web-1", "missing"]).await?;
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("web-1"), "{}", run.stdout);
    assert_eq!(
        run.stderr,
        "Error from server (NotFound): pods \"missing\" not found\n"
    );
    let run = env.run(&["get", "po", "-n", "empty"]).await?.ok()?;
    assert_eq!(run.stderr, "No resources found in empty namespace.\n");
    let run = env.run(&["get", "po", "web-1", "-A"]).await?;
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "error: a resource cannot be retrieved by name across all namespaces: drop -A or the names\n"
        )
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_a_row_per_change() -> Result<()> {
    let cluster = SimCluster::start().await?;
    let env = Env::new(&cluster)?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let cm = |name: &str| -> Result<ConfigMap> {
        Ok(serde_json::from_value(
            json!({"metadata": {"name": name}, "data": {"k": "v"}}),
        )?)
    };
    cms.create(&PostParams::default(), &cm("first")?).await?;

    let mut child = env
        .command(&["get", "cm", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut next = async || -> Result<String> {
        tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("no line from coxctl get -w within 30 s")??
            .context("coxctl get -w ended")
    };
    let header = next().await?;
    assert_eq!(words(&header), ["NAME", "DATA", "AGE"]);
    let first = next().await?;
    assert_eq!(words(&first)[..2], ["first", "1"]);
    // The watch starts after the list: the next lines are the changes, in order.
    cms.create(&PostParams::default(), &cm("other")?).await?;
    let added = next().await?;
    assert_eq!(words(&added)[..2], ["other", "1"]);
    // Rows keep the first table's columns (a name no longer than those printed).
    assert_eq!(added.find('1'), header.find("DATA"), "{header}\n{added}");
    cms.delete("first", &Default::default()).await?;
    let deleted = next().await?;
    assert_eq!(words(&deleted)[..2], ["first", "1"]);
    child.kill().await?;

    let run = env.run(&["get", "cm,svc", "-w"]).await?;
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (1, "error: -w watches one type at a time (got 2)\n")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_reports_created_configured_unchanged_and_writes_objects() -> Result<()> {
    let cluster = SimCluster::start().await?;
    let env = Env::new(&cluster)?;
    let file = env.write("app.yaml", APP)?;

    let run = env.run(&["apply", "-f", path_str(&file)]).await?.ok()?;
    assert_eq!(
        run.stdout,
        "configmap/settings created\ndeployment.apps/web created\nservice/web created\n"
    );
    let deployments: Api<Deployment> = Api::namespaced(cluster.client(), "default");
    let web = deployments.get("web").await?;
    assert_eq!(web.spec.replicas, Some(2));
    let managers: Vec<String> = web
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(managers.contains(&"coxctl".to_owned()), "{managers:?}");
    // -o json hides managedFields unless asked, as kubectl does.
    let run = env
        .run(&["get", "deploy", "web", "-o", "json"])
        .await?
        .ok()?;
    let shown: Value = serde_json::from_str(&run.stdout)?;
    assert!(
        shown["metadata"].get("managedFields").is_none(),
        "{}",
        run.stdout
    );
    let run = env
        .run(&[
            "get",
            "deploy",
            "web",
            "-o",
            "json",
            "--show-managed-fields",
        ])
        .await?
        .ok()?;
    let shown: Value = serde_json::from_str(&run.stdout)?;
    assert_eq!(
        shown["metadata"]["managedFields"][0]["manager"], "coxctl",
        "{}",
        run.stdout
    );

    let run = env.run(&["apply", "-f", path_str(&file)]).await?.ok()?;
    assert_eq!(
        run.stdout,
        "configmap/settings unchanged\ndeployment.apps/web unchanged\nservice/web unchanged\n"
    );

    // A change to one object, from stdin.
    let changed = APP.replace("color: blue", "color: green");
    let run = env
        .run_with_stdin(&["apply", "-f", "-"], &changed)
        .await?
        .ok()?;
    assert_eq!(
        run.stdout,
        "configmap/settings configured\ndeployment.apps/web unchanged\nservice/web unchanged\n"
    );
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let settings = cms.get("settings").await?;
    assert_eq!(settings.data.unwrap()["color"], "green");

    // A directory, into another namespace given by -n.
    let dir = env.home.path().join("manifests");
    std::fs::create_dir(&dir)?;
    std::fs::write(
        dir.join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: staging}\n",
    )?;
    std::fs::write(
        dir.join("x-cm.json"),
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"extra"},"data":{"a":"1"}}"#,
    )?;
    let run = env
        .run(&["apply", "-n", "staging", "-f", path_str(&dir)])
        .await?
        .ok()?;
    assert_eq!(
        run.stdout,
        "namespace/staging created\nconfigmap/extra created\n"
    );
    Api::<ConfigMap>::namespaced(cluster.client(), "staging")
        .get("extra")
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_errors_name_the_file_the_document_and_the_field() -> Result<()> {
    let cluster = SimCluster::start().await?;
    let env = Env::new(&cluster)?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");

    // A malformed second document: nothing is applied.
    let bad = env.write("bad.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: first}\n---\napiVersion: v1\nmetadata: {name: second}\n")?;
    let run = env.run(&["apply", "-f", path_str(&bad)]).await?;
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr,
        format!(
            "error: {} (document 2): field \"kind\" is not set\n",
            bad.display()
        )
    );
    assert!(cms.get_opt("first").await?.is_none());

    // A kind the server does not have.
    let unknown = env.write(
        "unknown.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n",
    )?;
    let run = env.run(&["apply", "-f", path_str(&unknown)]).await?;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("(document 1): no matches for kind \"Widget\" in version \"example.com/v1\""),
        "{}",
        run.stderr
    );

    // The server's validation message, naming the field; the valid object still goes in.
    let invalid = env.write(
        "invalid.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: broken}\n\
         spec:\n  replicas: -1\n  selector: {matchLabels: {app: b}}\n  template:\n    metadata: {labels: {app: b}}\n    spec: {containers: [{name: b, image: b}]}\n",
    )?;
    let run = env.run(&["apply", "-f", path_str(&invalid)]).await?;
    assert_eq!(run.code, 1);
    assert_eq!(run.stdout, "configmap/ok created\n");
    assert!(
        run.stderr
            .contains("(document 2): deployment.apps/broken: Error from server (Invalid)"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("spec.replicas"), "{}", run.stderr);

    // -n contradicting the object's namespace.
    let other = env.write(
        "other.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: prod}\n",
    )?;
    let run = env
        .run(&["apply", "-n", "dev", "-f", path_str(&other)])
        .await?;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains(
            "the namespace from the provided object \"prod\" does not match the namespace \"dev\""
        ),
        "{}",
        run.stderr
    );

    let run = env.run(&["apply", "-f", "/nonexistent/app.yaml"]).await?;
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "error: the path \"/nonexistent/app.yaml\" does not exist: No such file or directory (os error 2)\n"
        )
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_scale() -> Result<()> {
    let cluster = SimCluster::start().await?;
    let env = Env::new(&cluster)?;
    let file = env.write("app.yaml", APP)?;
    env.run(&["apply", "-f", path_str(&file)]).await?.ok()?;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client(), "default");

    let run = env
        .run(&["scale", "deploy/web", "--replicas", "5"])
        .await?
        .ok()?;
    assert_eq!(run.stdout, "deployment.apps/web scaled\n");
    assert_eq!(deployments.get("web").await?.spec.replicas, Some(5));
    let run = env
        .run(&[
            "scale",
            "deployment",
            "web",
            "--replicas",
            "1",
            "--current-replicas",
            "3",
        ])
        .await?;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains(
            "expected deployment.apps/web to have 3 replicas (--current-replicas), it has 5"
        ),
        "{}",
        run.stderr
    );
    let run = env
        .run(&["scale", "cm/settings", "--replicas", "2"])
        .await?;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("configmap cannot be scaled"),
        "{}",
        run.stderr
    );
    let run = env
        .run(&["scale", "deploy/missing", "--replicas", "2"])
        .await?;
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "Error from server (NotFound): deployments.apps \"missing\" not found\n"
        )
    );

    let run = env.run(&["delete", "cm", "settings"]).await?.ok()?;
    assert_eq!(
        run.stdout,
        "configmap \"settings\" deleted from default namespace\n"
    );
    assert!(
        Api::<ConfigMap>::namespaced(cluster.client(), "default")
            .get_opt("settings")
            .await?
            .is_none()
    );
    let run = env.run(&["delete", "cm", "settings"]).await?;
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "Error from server (NotFound): configmaps \"settings\" not found\n"
        )
    );
    env.run(&["delete", "cm", "settings", "--ignore-not-found"])
        .await?
        .ok()?;

    // By manifest (the ConfigMap is already gone), waiting until the objects are gone.
    let run = env
        .run(&["delete", "-f", path_str(&file), "--wait"])
        .await?;
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stdout,
        "deployment.apps \"web\" deleted from default namespace\nservice \"web\" deleted from default namespace\n"
    );
    assert!(deployments.get_opt("web").await?.is_none());
    let run = env.run(&["delete", "pods"]).await?;
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "error: you must name the pods to delete, or pass -l SELECTOR or --all\n"
        )
    );
    Ok(())
}

/// A ReplicaSet of `web` at `revision`, as the Deployment controller would have made it.
fn replicaset(owner_uid: &str, revision: u32, image: &str) -> Result<ReplicaSet> {
    let hash = format!("h{revision}");
    Ok(serde_json::from_value(json!({
        "metadata": {
            "name": format!("web-{hash}"),
            "labels": {"app": "web", "pod-template-hash": hash},
            "annotations": {"deployment.kubernetes.io/revision": revision.to_string()},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": owner_uid, "controller": true}],
        },
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web", "pod-template-hash": hash}},
            "template": {
                "metadata": {"labels": {"app": "web", "pod-template-hash": hash}},
                "spec": {"containers": [{"name": "web", "image": image, "ports": [{"containerPort": 8080}]}]},
            },
        },
    }))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_history_undo_and_status() -> Result<()> {
    let cluster = SimCluster::start().await?;
    let env = Env::new(&cluster)?;
    let file = env.write("app.yaml", APP)?;
    env.run(&["apply", "-f", path_str(&file)]).await?.ok()?;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client(), "default");
    let uid = deployments.get("web").await?.metadata.uid.context("uid")?;
    // No controllers run here: the ReplicaSets of two revisions are written by hand, and the
    // Deployment moved to revision 2.
    let sets: Api<ReplicaSet> = Api::namespaced(cluster.client(), "default");
    sets.create(
        &PostParams::default(),
        &replicaset(&uid, 1, "registry.local/web:1")?,
    )
    .await?;
    sets.create(
        &PostParams::default(),
        &replicaset(&uid, 2, "registry.local/web:2")?,
    )
    .await?;
    let v2 = APP.replace("registry.local/web:1", "registry.local/web:2");
    env.run_with_stdin(&["apply", "-f", "-"], &v2).await?.ok()?;

    let run = env
        .run(&["rollout", "history", "deployment/web"])
        .await?
        .ok()?;
    assert_eq!(
        run.stdout,
        "deployment.apps/web\nREVISION  CHANGE-CAUSE\n1         <none>\n2         <none>\n"
    );
    let run = env
        .run(&["rollout", "history", "deploy/web", "--revision", "1"])
        .await?
        .ok()?;
    assert!(
        run.stdout
            .starts_with("deployment.apps/web with revision #1\nPod Template:\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("registry.local/web:1"),
        "{}",
        run.stdout
    );

    let run = env
        .run(&["rollout", "undo", "deployment/web"])
        .await?
        .ok()?;
    assert_eq!(run.stdout, "deployment.apps/web rolled back\n");
    let template = deployments.get("web").await?.spec.template;
    let image = template.spec.context("pod spec")?.containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("registry.local/web:1"));
    let labels = template
        .metadata
        .context("template metadata")?
        .labels
        .unwrap_or_default();
    assert!(!labels.contains_key("pod-template-hash"), "{labels:?}");
    let run = env
        .run(&["rollout", "undo", "deployment", "web", "--to-revision", "1"])
        .await?
        .ok()?;
    assert_eq!(
        run.stdout,
        "deployment.apps/web skipped rollback (current template already matches revision 1)\n"
    );
    let run = env
        .run(&["rollout", "undo", "deployment/web", "--to-revision", "7"])
        .await?;
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "error: unable to find the specified revision 7 in the history of deployment \"web\"\n"
        )
    );
    let run = env.run(&["rollout", "undo", "svc/web"]).await?;
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "error: service is not supported here: this works on deployment.apps\n"
        )
    );

    // Status: not yet observed, then waiting on replicas; a bounded --timeout fails.
    let run = env
        .run(&["rollout", "status", "deployment/web", "--timeout", "1s"])
        .await?;
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stdout,
        "Waiting for deployment spec update to be observed...\n"
    );
    assert!(
        run.stderr
            .contains("timed out waiting for the rollout of deployment.apps/web"),
        "{}",
        run.stderr
    );

    // A watcher that sees the status move to complete.
    let generation = deployments
        .get("web")
        .await?
        .metadata
        .generation
        .context("generation")?;
    let status = |updated: i64, available: i64| json!({"status": {"observedGeneration": generation, "replicas": 2, "updatedReplicas": updated, "availableReplicas": available, "readyReplicas": available}});
    deployments
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&status(2, 1)))
        .await?;
    let mut child = env
        .command(&["rollout", "status", "deployment/web"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await??;
    assert_eq!(
        first.as_deref(),
        Some(
            "Waiting for deployment \"web\" rollout to finish: 1 of 2 updated replicas are available..."
        )
    );
    deployments
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&status(2, 2)))
        .await?;
    let last = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await??;
    assert_eq!(
        last.as_deref(),
        Some("deployment \"web\" successfully rolled out")
    );
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    assert!(exit.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_shows_fields_and_events() -> Result<()> {
    let cluster = SimCluster::start().await?;
    let _node = cluster.add_node(SimNode::new("n1")).await?;
    running_pod(&cluster, "web-1", json!({"app": "web"})).await?;
    let env = Env::new(&cluster)?;
    let file = env.write("app.yaml", APP)?;
    env.run(&["apply", "-f", path_str(&file)]).await?.ok()?;
    let pod = Api::<Pod>::namespaced(cluster.client(), "default")
        .get("web-1")
        .await?;
    let event: Event = serde_json::from_value(json!({
        "metadata": {"name": "web-1.pulled"},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": "web-1", "namespace": "default", "uid": pod.metadata.uid},
        "type": "Normal", "reason": "Pulled", "message": "Container image \"registry.local/app:1\" already present on machine",
        "source": {"component": "kubelet", "host": "n1"}, "count": 1,
        "firstTimestamp": jiff::Timestamp::now().to_string(), "lastTimestamp": jiff::Timestamp::now().to_string(),
    }))?;
    Api::<Event>::namespaced(cluster.client(), "default")
        .create(&PostParams::default(), &event)
        .await?;

    let run = env.run(&["describe", "pod", "web-1"]).await?.ok()?;
    let has = |line: &[&str]| run.stdout.lines().any(|l| words(l) == line);
    assert!(has(&["Name:", "web-1"]), "{}", run.stdout);
    assert!(has(&["Node:", "n1/172.31.0.1"]), "{}", run.stdout);
    assert!(has(&["Status:", "Running"]), "{}", run.stdout);
    assert!(has(&["Image:", "registry.local/app:1"]), "{}", run.stdout);
    assert!(has(&["Ready", "True"]), "{}", run.stdout);
    let events_at = run.stdout.find("Events:\n").context("no Events section")?;
    let event_line = run.stdout[events_at..]
        .lines()
        .nth(3)
        .context("no event row")?;
    assert_eq!(
        words(event_line)[..2],
        ["Normal", "Pulled"],
        "{}",
        run.stdout
    );
    assert!(
        event_line.contains(
            "kubelet  Container image \"registry.local/app:1\" already present on machine"
        ),
        "{event_line}"
    );

    let run = env.run(&["describe", "deploy/web"]).await?.ok()?;
    assert!(run.stdout.contains("Replicas:               2 desired | 0 updated | 0 total | 0 available | 0 unavailable\n"), "{}", run.stdout);
    let last_two: Vec<&str> = run.stdout.lines().rev().take(2).collect();
    assert_eq!(words(last_two[0]), ["Events:", "<none>"], "{}", run.stdout);
    // Events line up with the fields above them, as in kubectl.
    assert_eq!(
        last_two[0].find("<none>"),
        last_two[1].find("<none>"),
        "{}",
        run.stdout
    );

    let run = env.run(&["describe", "svc", "web"]).await?.ok()?;
    let has = |line: &[&str]| run.stdout.lines().any(|l| words(l) == line);
    assert!(
        has(&["Type:", "ClusterIP"])
            && has(&["Port:", "http", "80/TCP"])
            && has(&["TargetPort:", "8080/TCP"]),
        "{}",
        run.stdout
    );

    // A Node event recorded the way upstream's kubelet does: the node's name as its uid.
    let node_event: Event = serde_json::from_value(json!({
        "metadata": {"name": "n1.starting"},
        "involvedObject": {"kind": "Node", "name": "n1", "uid": "n1"},
        "type": "Normal", "reason": "Starting", "message": "Starting kubelet.",
        "source": {"component": "kubelet", "host": "n1"},
        "lastTimestamp": jiff::Timestamp::now().to_string(),
    }))?;
    Api::<Event>::namespaced(cluster.client(), "default")
        .create(&PostParams::default(), &node_event)
        .await?;
    let run = env.run(&["describe", "no", "n1"]).await?.ok()?;
    let has = |line: &[&str]| run.stdout.lines().any(|l| words(l) == line);
    assert!(
        run.stdout
            .lines()
            .any(|l| words(l).starts_with(&["Normal", "Starting"])
                && l.ends_with("kubelet  Starting kubelet.")),
        "{}",
        run.stdout
    );
    assert!(has(&["HolderIdentity:", "n1"]), "{}", run.stdout);
    assert!(
        has(&["InternalIP:", "172.31.0.1"]) && has(&["Kubelet", "Version:", "v1.37.0-sim"]),
        "{}",
        run.stdout
    );
    assert!(
        has(&["Non-terminated", "Pods:", "(1", "in", "total)"]),
        "{}",
        run.stdout
    );

    // ConfigMaps show their data as written; Secrets only sizes.
    let run = env.run(&["describe", "cm", "settings"]).await?.ok()?;
    assert!(
        run.stdout.contains("Data\n====\ncolor:\n----\nblue\n"),
        "{}",
        run.stdout
    );
    let secret = env.write(
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\ndata: {password: aHVudGVyMg==}\n",
    )?;
    env.run(&["apply", "-f", path_str(&secret)]).await?.ok()?;
    let run = env.run(&["describe", "secret", "db"]).await?.ok()?;
    assert!(
        run.stdout
            .lines()
            .any(|l| words(l) == ["password:", "7", "bytes"]),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("hunter2") && !run.stdout.contains("aHVudGVyMg"),
        "{}",
        run.stdout
    );

    // A kind without its own describer: the generic rendering.
    let run = env.run(&["describe", "ns", "default"]).await?.ok()?;
    let has = |line: &[&str]| run.stdout.lines().any(|l| words(l) == line);
    assert!(
        has(&["Name:", "default"])
            && has(&["Kind:", "Namespace"])
            && has(&["API", "Version:", "v1"]),
        "{}",
        run.stdout
    );

    let run = env.run(&["describe", "pod", "nope"]).await?;
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (1, "Error from server (NotFound): pods \"nope\" not found\n")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_shows_server_leaders_and_nodes() -> Result<()> {
    let cluster = SimCluster::start().await?;
    let _node = cluster.add_node(SimNode::new("n1")).await?;
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "kube-scheduler", "namespace": "kube-system"},
        "spec": {"holderIdentity": "cp-1_4f2a", "leaseDurationSeconds": 3600, "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()},
    }))?;
    Api::<Lease>::namespaced(cluster.client(), "kube-system")
        .create(&PostParams::default(), &lease)
        .await?;
    let env = Env::new(&cluster)?;

    // A stand-in for a node agent's `/healthz` (the agent's own answer is `ok`).
    let agent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let agent_url = format!("http://{}", agent.local_addr()?);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = agent.accept().await {
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).await;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await;
        }
    });
    let run = env
        .run(&[
            "cluster",
            "status",
            "--agent",
            &agent_url,
            "--agent",
            "http://127.0.0.1:1",
        ])
        .await?
        .ok()?;
    let lines: Vec<Vec<&str>> = run.stdout.lines().map(words).collect();
    assert!(
        lines.contains(&vec!["API", "server:", cluster.url().as_str()]),
        "{}",
        run.stdout
    );
    assert!(lines.contains(&vec!["Ready:", "ok"]), "{}", run.stdout);
    assert!(
        lines.iter().any(|l| l.first() == Some(&"Version:")),
        "{}",
        run.stdout
    );
    let leader = lines
        .iter()
        .find(|l| l.first() == Some(&"kube-scheduler"))
        .context("no scheduler row")?;
    assert_eq!(
        (leader[1], leader.last().copied()),
        ("cp-1_4f2a", Some("held")),
        "{}",
        run.stdout
    );
    let node = lines
        .iter()
        .find(|l| l.first() == Some(&"n1"))
        .context("no node row")?;
    assert_eq!(
        node[..4],
        ["n1", "Ready", "v1.37.0-sim", "172.31.0.1"],
        "{}",
        run.stdout
    );
    assert!(
        lines.contains(&vec![agent_url.as_str(), "ok"]),
        "{}",
        run.stdout
    );
    let dead = lines
        .iter()
        .find(|l| l.first() == Some(&"http://127.0.0.1:1"))
        .context("no row for the dead agent")?;
    assert_eq!(dead.get(1), Some(&"unreachable"), "{}", run.stdout);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_exec_check_the_pod_and_container_first() -> Result<()> {
    let cluster = SimCluster::start().await?;
    let env = Env::new(&cluster)?;
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "two"},
        "spec": {"containers": [{"name": "app", "image": "a"}, {"name": "sidecar", "image": "b"}]},
    }))?;
    pods.create(&PostParams::default(), &pod).await?;

    // Selectors: nothing matching, and more pods than may be followed at once.
    let run = env.run(&["logs", "-l", "app=none"]).await?.ok()?;
    assert_eq!(run.stderr, "No resources found in default namespace.\n");
    for i in 0..6 {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("many-{i}"), "labels": {"app": "many"}},
            "spec": {"containers": [{"name": "app", "image": "a"}]},
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
    }
    let run = env.run(&["logs", "-l", "app=many", "-f"]).await?;
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "error: you are attempting to follow 6 log streams, but the maximum allowed concurrency is 5: use --max-log-requests to increase the limit\n"
        )
    );
    let run = env.run(&["logs"]).await?;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("required arguments were not provided"),
        "{}",
        run.stderr
    );

    let run = env.run(&["logs", "missing"]).await?;
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "Error from server (NotFound): pods \"missing\" not found\n"
        )
    );
    let run = env.run(&["logs", "two", "-c", "db"]).await?;
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "error: container \"db\" is not valid for pod \"two\": choose one of: app, sidecar\n"
        )
    );
    let run = env.run(&["exec", "two", "-c", "db", "--", "true"]).await?;
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "error: container \"db\" is not valid for pod \"two\": choose one of: app, sidecar\n"
        )
    );
    // TYPE/NAME of something with a pod selector: one of its pods.
    let run = env.run(&["exec", "deploy/web", "--", "true"]).await?;
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "Error from server (NotFound): deployments.apps \"web\" not found\n"
        )
    );
    let quiet = env.write(
        "quiet.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: quiet}\nspec:\n  selector: {app: nothing}\n  ports: [{port: 80}]\n",
    )?;
    env.run(&["apply", "-f", path_str(&quiet)]).await?.ok()?;
    let run = env.run(&["logs", "svc/quiet"]).await?;
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "error: no pods found for service/quiet (selector app=nothing)\n"
        )
    );
    let run = env.run(&["logs", "ns/default"]).await?;
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "error: namespace/default has no pod selector (spec.selector): name a pod instead\n"
        )
    );
    pods.patch_status(
        "two",
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"phase": "Succeeded"}})),
    )
    .await?;
    let run = env.run(&["exec", "two", "--", "true"]).await?;
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (
            1,
            "error: cannot exec into a container in a completed pod; current phase is Succeeded\n"
        )
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_context_and_namespace_selection() -> Result<()> {
    let cluster = SimCluster::start().await?;
    let env = Env::new(&cluster)?;
    Api::<ConfigMap>::namespaced(cluster.client(), "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "in-default"}}))?,
        )
        .await?;

    // $KUBECONFIG, with a context whose namespace is `team`.
    let text = std::fs::read_to_string(cluster.kubeconfig_path())?
        .replace("current-context: \"kubernetes-admin@coxswain\"", "current-context: team")
        .replace("contexts:\n", "contexts:\n- name: team\n  context:\n    cluster: coxswain\n    user: \"kubernetes-admin\"\n    namespace: team\n");
    let kubeconfig = env.write("team.kubeconfig", &text)?;
    let run_env = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_coxctl"));
        cmd.args(args)
            .env("HOME", env.home.path())
            .env("KUBECONFIG", &kubeconfig)
            .kill_on_drop(true);
        cmd
    };
    env.run(&[
        "apply",
        "-n",
        "default",
        "-f",
        path_str(&env.write(
            "ns.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n",
        )?),
    ])
    .await?
    .ok()?;
    let cm = env.write(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: in-team}\n",
    )?;
    let args = ["apply", "-f", path_str(&cm)];
    let run = output(run_env(&args), &args).await?.ok()?;
    assert_eq!(run.stdout, "configmap/in-team created\n");
    assert!(
        Api::<ConfigMap>::namespaced(cluster.client(), "team")
            .get_opt("in-team")
            .await?
            .is_some()
    );
    let args = ["get", "cm", "-o", "name", "--context", "kubernetes-admin@coxswain"];
    let run = output(run_env(&args), &args).await?.ok()?;
    assert!(
        run.stdout.contains("configmap/in-default\n") && !run.stdout.contains("in-team"),
        "{}",
        run.stdout
    );

    let args = ["get", "cm", "--context", "nope"];
    let run = output(run_env(&args), &args).await?;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .starts_with("error: context \"nope\" not found in the kubeconfig"),
        "{}",
        run.stderr
    );

    // No kubeconfig anywhere.
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_coxctl"));
    cmd.args(["get", "po"])
        .env("HOME", env.home.path())
        .env_remove("KUBECONFIG")
        .kill_on_drop(true);
    let run = output(cmd, &["get", "po"]).await?;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.starts_with("error: no kubeconfig:"),
        "{}",
        run.stderr
    );

    // An API server that is not there.
    let dead = env.write(
        "dead.kubeconfig",
        &text.replace(&cluster.url(), "http://127.0.0.1:1"),
    )?;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_coxctl"));
    cmd.arg("--kubeconfig")
        .arg(&dead)
        .args(["get", "po"])
        .env("HOME", env.home.path())
        .kill_on_drop(true);
    let run = output(cmd, &["get", "po"]).await?;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("cannot reach the API server at http://127.0.0.1:1"),
        "{}",
        run.stderr
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_commands_still_work() -> Result<()> {
    let home = tempfile::tempdir()?;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_coxctl"));
    cmd.args(["completion", "bash"])
        .env("HOME", home.path())
        .kill_on_drop(true);
    let run = output(cmd, &["completion", "bash"]).await?.ok()?;
    assert!(
        run.stdout.contains("_coxctl()") && run.stdout.contains("rollout"),
        "completion script lacks coxctl's commands"
    );

    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_coxctl"));
    cmd.args(["dataplane", "services", "--agent", "http://127.0.0.1:1"])
        .env("HOME", home.path())
        .kill_on_drop(true);
    let run = output(cmd, &["dataplane"]).await?;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .starts_with("error: failed to reach the node agent at http://127.0.0.1:1"),
        "{}",
        run.stderr
    );
    Ok(())
}
