//! The official Python `kubernetes` client against the API server: create, list, watch,
//! patch, delete.

mod common;

use anyhow::{Result, ensure};
use common::{Backend, StoreHandle, TestServer};

const WATCH_SCRIPT: &str = r#"
import sys
from kubernetes import client, config, watch

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
apps = client.AppsV1Api()

cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py", labels={"from": "python"}), data={"a": "1"})
created = v1.create_namespaced_config_map("default", cm)
assert created.metadata.uid, created
items = v1.list_namespaced_config_map("default", label_selector="from=python").items
assert [i.metadata.name for i in items] == ["py"], items

# Patch first: a watch from the creation's resourceVersion replays what came after it.
patched = v1.patch_namespaced_config_map("py", "default", {"data": {"a": "2"}})
assert patched.data == {"a": "2"}, patched.data

w = watch.Watch()
seen = []
for ev in w.stream(v1.list_namespaced_config_map, "default", resource_version=created.metadata.resource_version, timeout_seconds=15):
    seen.append((ev["type"], ev["object"].metadata.name, dict(ev["object"].data or {})))
    if ev["type"] == "MODIFIED":
        w.stop()
        break
assert seen == [("MODIFIED", "py", {"a": "2"})], seen

dep = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "pyweb"},
    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "pyweb"}},
             "template": {"metadata": {"labels": {"app": "pyweb"}},
                          "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}},
}
apps.create_namespaced_deployment("default", dep)
apps.patch_namespaced_deployment_scale("pyweb", "default", {"spec": {"replicas": 3}})
assert apps.read_namespaced_deployment("pyweb", "default").spec.replicas == 3
patched = apps.patch_namespaced_deployment("pyweb", "default", {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:2"}]}}}})
assert patched.spec.template.spec.containers[0].image == "nginx:2"
assert patched.metadata.generation == 3, patched.metadata.generation  # created 1, scaled 2, image 3

try:
    v1.read_namespaced_config_map("absent", "default")
    raise SystemExit("expected a 404")
except client.exceptions.ApiException as e:
    assert e.status == 404, e.status

v1.delete_namespaced_config_map("py", "default")
apps.delete_namespaced_deployment("pyweb", "default")
assert v1.list_namespaced_config_map("default", label_selector="from=python").items == []
print("python client ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_create_list_watch_patch_delete() -> Result<()> {
    let store = StoreHandle::open(Backend::Embedded).await?;
    let server = TestServer::start(store.store.clone()).await?;
    let out = tokio::time::timeout(
        common::STEP * 2,
        tokio::process::Command::new(common::python_path())
            .arg("-c")
            .arg(WATCH_SCRIPT)
            .arg(&server.kubeconfig)
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("python client ok"),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
