//! The DaemonSet controller: one pod per eligible node (nodeSelector, required node
//! affinity, taints against the pod's tolerations plus the daemon tolerations upstream
//! adds), pinned to its node by `matchFields metadata.name` node affinity for the scheduler
//! to bind; RollingUpdate within maxUnavailable; ControllerRevisions for history.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use coxswain_runtime::events::{EventType, Recorder, object_ref};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodTemplateSpec, Taint, Toleration,
};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::info;

use super::Error;
use super::common::{
    self, Expectations, METRICS, claim, controller_of, create_pod, delete_pod,
    ensure_revision, is_active, is_available, is_ready, key_of, owner_ref, pod_from_template,
    random_suffix, reflect, reflect_owners, scaled_value, selector_of, selects, until_available,
    wait_synced,
};

const COMPONENT: &str = "daemonset-controller";
const REVISION_LABEL: &str = "controller-revision-hash";
const GENERATION_LABEL: &str = "pod-template-generation";

struct Ctx {
    client: Client,
    metrics: Arc<crate::Metrics>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    revisions: Store<ControllerRevision>,
    expectations: Arc<Expectations>,
    recorder: Recorder,
}

/// Runs the DaemonSet controller until aborted.
pub async fn run_daemonset(ctx: crate::Context) -> Result<(), Error> {
    let client = ctx.client.clone();
    let expectations = Arc::new(Expectations::default());
    let exp = expectations.clone();
    let (pods, pod_stream) = reflect(Api::<Pod>::all(client.clone()), move |ev| exp.observe(ev));
    let (sets, ds_stream) =
        reflect_owners(Api::<DaemonSet>::all(client.clone()), expectations.clone());
    let (nodes, node_stream) = reflect(Api::<Node>::all(client.clone()), |_| {});
    let (revisions, rev_stream) = reflect(Api::<ControllerRevision>::all(client.clone()), |_| {});
    let ctx = Arc::new(Ctx {
        metrics: ctx.metrics().clone(),
        recorder: Recorder::new(client.clone(), COMPONENT, None),
        client,
        pods,
        nodes,
        revisions,
        expectations,
    });
    let sets_for_nodes = sets.clone();
    let metrics = ctx.metrics.clone();
    let controller = Controller::for_stream(ds_stream, sets)
        .watches_stream(pod_stream, |pod: Pod| {
            common::owner_refs_of::<DaemonSet>(&pod.metadata)
        })
        .watches_stream(rev_stream, |r: ControllerRevision| {
            common::owner_refs_of::<DaemonSet>(&r.metadata)
        })
        // Any node change may change where daemons run.
        .watches_stream(node_stream, move |_node: Node| {
            sets_for_nodes
                .state()
                .iter()
                .map(|ds| ObjectRef::from_obj(&**ds))
                .collect::<Vec<_>>()
        });
    crate::reconciler::run(controller, "daemonset", metrics, ctx, reconcile).await;
    Ok(())
}

async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let key = key_of(&*ds);
    sync(&ds, &ctx, &key)
    .await
}

fn toleration(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.to_owned()),
        operator: Some("Exists".to_owned()),
        effect: Some(effect.to_owned()),
        ..Toleration::default()
    }
}

/// The tolerations upstream adds to every daemon pod (`AddOrUpdateDaemonPodTolerations`).
fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let mut out = vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        out.push(toleration(
            "node.kubernetes.io/network-unavailable",
            "NoSchedule",
        ));
    }
    out
}

fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        _ => {
            key == taint.key
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.clone().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let labels = node.labels();
    let exprs = term.match_expressions.clone().unwrap_or_default();
    let fields = term.match_fields.clone().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let name = node.name_any();
            let value = (r.key == "metadata.name").then_some(name.as_str());
            requirement_matches(r, value)
        })
}

/// Whether a daemon pod of `template` belongs on `node` (upstream's
/// `NodeShouldRunDaemonPod`, without resource fit: the scheduler decides that).
pub(crate) fn should_run(template: &PodTemplateSpec, node: &Node) -> bool {
    let spec = template.spec.clone().unwrap_or_default();
    let labels = node.labels();
    if let Some(sel) = &spec.node_selector
        && !sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    if let Some(required) = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        && !required
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node))
    {
        return false;
    }
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    tolerations.extend(daemon_tolerations(spec.host_network.unwrap_or(false)));
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|taint| tolerations.iter().any(|t| tolerates(t, taint)))
}

/// The node a daemon pod is for: its nodeName, or the node its affinity pins it to.
fn pod_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

/// The template for `node`: daemon tolerations added, node affinity replaced by
/// `matchFields metadata.name In [node]` (upstream's `ReplaceDaemonSetPodNodeNameNodeAffinity`).
fn template_for_node(template: &PodTemplateSpec, node: &str) -> PodTemplateSpec {
    let mut t = template.clone();
    let spec = t.spec.get_or_insert_with(Default::default);
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    for extra in daemon_tolerations(spec.host_network.unwrap_or(false)) {
        if !tolerations
            .iter()
            .any(|t| t.key == extra.key && t.effect == extra.effect)
        {
            tolerations.push(extra);
        }
    }
    spec.tolerations = Some(tolerations);
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".to_owned(),
                operator: "In".to_owned(),
                values: Some(vec![node.to_owned()]),
            }]),
            match_expressions: None,
        }],
    });
    t
}

/// A node during a surging rolling update: its name, its old daemon pod (if still
/// kept) and its new one (if started).
type SurgeNode = (String, Option<Arc<Pod>>, Option<Arc<Pod>>);

async fn sync(ds: &DaemonSet, ctx: &Ctx, key: &str) -> Result<Action, Error> {
    wait_synced(&ctx.pods, "pod").await?;
    wait_synced(&ctx.nodes, "node").await?;
    wait_synced(&ctx.revisions, "controllerrevision").await?;
    let ns = ds.namespace().unwrap_or_default();
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let selector = selector_of(Some(&ds.spec.selector), &format!("daemonset {key}"))?;
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let candidates: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| match controller_of(&p.metadata) {
            Some(r) => r.uid == uid,
            None => selects(&selector, &p.metadata),
        })
        .collect();
    let pods = claim(&pod_api, ds, &selector, candidates).await?;
    let template = &ds.spec.template;
    let revision_name = ensure_revision(
        &ctx.client,
        &ctx.revisions,
        ds,
        template,
        &[],
        ds.spec.revision_history_limit.unwrap_or(10),
    )
    .await?;
    let hash = revision_name
        .rsplit('-')
        .next()
        .unwrap_or_default()
        .to_owned();

    let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
    let mut orphaned = Vec::new();
    for pod in &pods {
        match pod_node(pod) {
            Some(n) => by_node.entry(n).or_default().push(pod.clone()),
            None => orphaned.push(pod.clone()),
        }
    }
    let nodes = ctx.nodes.state();
    let now = common::now();
    let min_ready = ds.spec.min_ready_seconds.unwrap_or(0);
    let rolling_update = ds
        .spec
        .update_strategy
        .as_ref()
        .filter(|s| s.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate")
        .map(|s| s.rolling_update.clone().unwrap_or_default());
    // Eligible nodes, for percentages of maxSurge and maxUnavailable.
    let eligible = i32::try_from(nodes.iter().filter(|n| should_run(template, n)).count())
        .unwrap_or(i32::MAX);
    let max_surge = match &rolling_update {
        Some(r) => scaled_value(r.max_surge.as_ref(), eligible, true, 0).max(0),
        None => 0,
    };
    let is_new = |p: &Arc<Pod>| p.labels().get(REVISION_LABEL) == Some(&hash);
    let mut to_create: Vec<String> = Vec::new();
    let mut to_delete: Vec<Arc<Pod>> = orphaned;
    let mut desired = 0;
    let mut current = 0;
    let mut misscheduled = 0;
    let mut ready = 0;
    let mut available = 0;
    let mut updated = 0;
    // (node, its one live daemon pod) for rolling updates.
    let mut live: Vec<Arc<Pod>> = Vec::new();
    // With maxSurge: (node, its old pod, its new pod) of every node running the daemon.
    let mut surging: Vec<SurgeNode> = Vec::new();
    let mut unavailable_nodes = 0;
    for node in &nodes {
        let name = node.name_any();
        let on_node = by_node.remove(&name).unwrap_or_default();
        let active: Vec<&Arc<Pod>> = on_node.iter().filter(|p| is_active(p)).collect();
        if should_run(template, node) {
            desired += 1;
            // Finished daemons are replaced.
            to_delete.extend(
                on_node
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none() && !is_active(p))
                    .cloned(),
            );
            match active.as_slice() {
                [] => {
                    unavailable_nodes += 1;
                    if !on_node.iter().any(|p| common::is_terminating(p)) {
                        to_create.push(name.clone());
                    }
                }
                [first, rest @ ..] => {
                    current += 1;
                    let mut sorted: Vec<&Arc<Pod>> = std::iter::once(*first)
                        .chain(rest.iter().copied())
                        .collect();
                    sorted.sort_by_key(|p| p.metadata.creation_timestamp.clone());
                    if max_surge > 0 {
                        // Surging: the oldest old pod and the oldest new one may run side by
                        // side while the new one is not yet available (upstream's rule);
                        // any other pod is a mistake to undo.
                        let new = sorted.iter().find(|p| is_new(p)).map(|p| (*p).clone());
                        let old = sorted.iter().find(|p| !is_new(p)).map(|p| (*p).clone());
                        let kept = |p: &Arc<Pod>| {
                            [&new, &old].into_iter().flatten().any(|k| Arc::ptr_eq(k, p))
                        };
                        to_delete.extend(sorted.iter().filter(|p| !kept(p)).map(|p| (*p).clone()));
                        let old = match (&new, old) {
                            (Some(n), Some(o))
                                if !is_ready(&o) || is_available(n, min_ready, now) =>
                            {
                                to_delete.push(o);
                                None
                            }
                            (_, o) => o,
                        };
                        if let Some(n) = &new {
                            live.push(n.clone());
                        }
                        surging.push((name.clone(), old, new));
                    } else {
                        // Keep the oldest; more than one is a mistake to undo.
                        to_delete.extend(sorted.iter().skip(1).map(|p| (*p).clone()));
                    }
                    let pod = sorted[0];
                    if is_ready(pod) {
                        ready += 1;
                    }
                    if is_available(pod, min_ready, now) {
                        available += 1;
                    } else {
                        unavailable_nodes += 1;
                    }
                    if pod.labels().get(REVISION_LABEL) == Some(&hash) {
                        updated += 1;
                    }
                    live.push(pod.clone());
                }
            }
        } else if !active.is_empty() {
            misscheduled += 1;
            to_delete.extend(active.into_iter().cloned());
        }
    }
    // Pods for nodes that no longer exist.
    for (_, gone) in by_node {
        to_delete.extend(
            gone.into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none()),
        );
    }

    if rolling_update.is_some() && max_surge > 0 {
        // Rolling update with maxSurge (upstream's surge path): a new pod starts beside
        // the old one at once where the old one is unavailable, and beside available old
        // ones on at most maxSurge nodes at a time; the old pod goes once the new one is
        // available (above). Nothing is ever unavailable on purpose.
        let mut in_flight = 0;
        let mut replace_now = Vec::new();
        let mut candidates = Vec::new();
        for (node, old, new) in &surging {
            match (old, new) {
                (Some(_), Some(_)) => in_flight += 1,
                (Some(o), None) if !is_available(o, min_ready, now) => replace_now.push(node.clone()),
                (Some(_), None) => candidates.push(node.clone()),
                (None, _) => {}
            }
        }
        let room = usize::try_from((max_surge - in_flight).max(0)).unwrap_or(0);
        to_create.extend(replace_now);
        to_create.extend(candidates.into_iter().take(room));
    } else if let Some(r) = &rolling_update {
        // Rolling update: replace old pods, never more than maxUnavailable nodes at once.
        let max_unavailable = scaled_value(r.max_unavailable.as_ref(), desired, true, 1).max(1);
        let mut budget = max_unavailable - unavailable_nodes;
        let mut old: Vec<&Arc<Pod>> = live
            .iter()
            .filter(|p| p.labels().get(REVISION_LABEL) != Some(&hash))
            .collect();
        // Unavailable old pods cost nothing to replace; then available ones, within budget.
        old.sort_by_key(|p| is_available(p, min_ready, now));
        for pod in old {
            if !is_available(pod, min_ready, now) {
                to_delete.push(pod.clone());
            } else if budget > 0 {
                to_delete.push(pod.clone());
                budget -= 1;
            }
        }
    }

    let reference = object_ref(ds);
    let mut manage_err = None;
    if ds.metadata.deletion_timestamp.is_none() && ctx.expectations.satisfied(key) {
        let mut labels = BTreeMap::from([(REVISION_LABEL.to_owned(), hash.clone())]);
        if let Some(g) = ds.metadata.generation {
            labels.insert(GENERATION_LABEL.to_owned(), g.to_string());
        }
        let base: String = ds.name_any().chars().take(57).collect();
        // Deletions first: an old daemon that goes in this sync (its replacement is
        // available) never overlaps the next node's surge pod.
        let mut seen = std::collections::HashSet::new();
        for pod in to_delete {
            if pod.metadata.deletion_timestamp.is_some() || !seen.insert(pod.metadata.uid.clone()) {
                continue;
            }
            match delete_pod(&pod_api, &ctx.expectations, key, &pod).await {
                Ok(()) => {
                    METRICS.write("daemonset", "delete_pod");
                    ctx.recorder
                        .record(
                            &reference,
                            EventType::Normal,
                            "SuccessfulDelete",
                            &format!("Deleted pod: {}", pod.name_any()),
                        )
                        .await;
                }
                Err(e) => {
                    manage_err.get_or_insert(e);
                }
            }
        }
        for node in &to_create {
            let pod = pod_from_template(
                &template_for_node(template, node),
                &format!("{base}-{}", random_suffix(5)),
                &ns,
                owner_ref(ds),
                &labels,
            );
            match create_pod(&pod_api, &ctx.expectations, key, &pod).await {
                Ok(p) => {
                    METRICS.write("daemonset", "create_pod");
                    info!(daemonset = key, node = %node, pod = %p.name_any(), "created daemon pod");
                    ctx.recorder
                        .record(
                            &reference,
                            EventType::Normal,
                            "SuccessfulCreate",
                            &format!("Created pod: {}", p.name_any()),
                        )
                        .await;
                }
                Err(e) => {
                    ctx.recorder
                        .record(
                            &reference,
                            EventType::Warning,
                            "FailedCreate",
                            &format!("Error creating: {e}"),
                        )
                        .await;
                    manage_err.get_or_insert(e);
                }
            }
        }
    }

    let old = ds.status.clone().unwrap_or_default();
    let status = DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: current,
        number_misscheduled: misscheduled,
        number_ready: ready,
        number_available: Some(available),
        number_unavailable: Some(desired - available),
        updated_number_scheduled: Some(updated),
        observed_generation: ds.metadata.generation,
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
    };
    if status_value(&status) != status_value(&old) {
        let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
        match api
            .patch_status(
                &ds.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status_value(&status)})),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(common::api_err("update status of", ds, e)),
        }
    }
    if let Some(e) = manage_err {
        return Err(e);
    }
    let next = live
        .iter()
        .filter_map(|p| until_available(p, min_ready, now))
        .min();
    Ok(common::requeue(next))
}

fn status_value(s: &DaemonSetStatus) -> serde_json::Value {
    let nz = |v: Option<i32>| v.filter(|n| *n != 0);
    json!({
        "desiredNumberScheduled": s.desired_number_scheduled,
        "currentNumberScheduled": s.current_number_scheduled,
        "numberMisscheduled": s.number_misscheduled,
        "numberReady": s.number_ready,
        "numberAvailable": nz(s.number_available),
        "numberUnavailable": nz(s.number_unavailable),
        "updatedNumberScheduled": nz(s.updated_number_scheduled),
        "observedGeneration": s.observed_generation,
        "collisionCount": s.collision_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(labels: &[(&str, &str)], taints: Vec<Taint>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..NodeSpec::default()
            }),
            status: None,
        }
    }

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            ..Taint::default()
        }
    }

    #[test]
    fn eligibility_follows_selector_and_taints() {
        let plain = PodTemplateSpec {
            metadata: None,
            spec: Some(PodSpec::default()),
        };
        let selective = PodTemplateSpec {
            metadata: None,
            spec: Some(PodSpec {
                node_selector: Some(BTreeMap::from([("zone".to_owned(), "a".to_owned())])),
                ..PodSpec::default()
            }),
        };
        let cases = [
            (&plain, node(&[], vec![]), true),
            (&selective, node(&[("zone", "b")], vec![]), false),
            (&selective, node(&[("zone", "a")], vec![]), true),
            (
                &plain,
                node(&[], vec![taint("dedicated", "NoSchedule")]),
                false,
            ),
            (
                &plain,
                node(&[], vec![taint("dedicated", "PreferNoSchedule")]),
                true,
            ),
            // Daemon tolerations: a cordoned or not-ready node still runs daemons.
            (
                &plain,
                node(
                    &[],
                    vec![taint("node.kubernetes.io/unschedulable", "NoSchedule")],
                ),
                true,
            ),
            (
                &plain,
                node(
                    &[],
                    vec![taint("node.kubernetes.io/not-ready", "NoExecute")],
                ),
                true,
            ),
        ];
        for (i, (template, node, want)) in cases.into_iter().enumerate() {
            assert_eq!(should_run(template, &node), want, "case {i}");
        }
    }

    #[test]
    fn pods_are_pinned_by_node_affinity() {
        let t = template_for_node(&PodTemplateSpec::default(), "n7");
        let pod = Pod {
            spec: t.spec,
            ..Pod::default()
        };
        assert_eq!(pod_node(&pod).as_deref(), Some("n7"));
    }
}
