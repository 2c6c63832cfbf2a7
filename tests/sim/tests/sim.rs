//! The simulated cluster itself: a fake kubelet registers its node, renews its Lease, runs
//! the pods bound to it and finishes the ones told to exit.

use std::time::Duration;

use anyhow::Result;
use coxswain_sim::{EXIT_CODE, SimCluster, SimNode};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

fn pod(name: &str, node: &str, annotations: serde_json::Value, restart: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "nodeName": node,
            "restartPolicy": restart,
            "containers": [{"name": "c", "image": "busybox"}],
        },
    }))
    .expect("valid pod")
}

fn phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn fake_kubelet_runs_finishes_and_deletes_pods() -> Result<()> {
    let cluster = SimCluster::start().await?;
    let client = cluster.client();
    let node = cluster
        .add_node(SimNode::new("sim-a").lease_interval(Duration::from_millis(200)))
        .await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let registered = nodes.get("sim-a").await?;
    let ready = registered
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    assert!(ready, "the node registers Ready");

    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    cluster
        .wait_for(Duration::from_secs(10), || async {
            Ok(leases.get_opt("sim-a").await?.is_some())
        })
        .await?;

    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    pods.create(&PostParams::default(), &pod("web", "sim-a", json!({}), "Always"))
        .await?;
    pods.create(
        &PostParams::default(),
        &pod("job", "sim-a", json!({EXIT_CODE: "3"}), "Never"),
    )
    .await?;
    cluster
        .wait_for(Duration::from_secs(10), || async {
            Ok(phase(&pods.get("web").await?) == "Running" && phase(&pods.get("job").await?) == "Failed")
        })
        .await?;
    let web = pods.get("web").await?;
    assert!(web.status.and_then(|s| s.pod_ip).is_some(), "a running pod has an IP");

    // Graceful deletion: the fake kubelet confirms it, so the pod disappears.
    pods.delete("web", &DeleteParams::default()).await?;
    cluster
        .wait_for(Duration::from_secs(10), || async { Ok(pods.get_opt("web").await?.is_none()) })
        .await?;

    // A stopped node no longer acts: a deleted pod stays terminating.
    node.stop().await;
    pods.create(&PostParams::default(), &pod("late", "sim-a", json!({}), "Always"))
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(phase(&pods.get("late").await?), "Pending", "a dead node runs nothing");
    Ok(())
}
