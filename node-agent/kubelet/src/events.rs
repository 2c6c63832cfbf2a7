//! Events the kubelet records (what `kubectl describe pod` and `kubectl get events` show),
//! with upstream's reasons and wording, component `kubelet` and the node as source host.
//!
//! Recording never waits for the API server: [`EventQueue::send`] puts the Event on a
//! bounded queue and returns; one writer task drains it through
//! [`coxswain_runtime::events::Recorder`] (which folds repeats into `count`). When the API
//! server does not keep up and the queue is full, the Event is dropped and counted
//! (`coxswain_kubelet_events_dropped`), as upstream's broadcaster drops past its queue.

use coxswain_runtime::events::{EventType, Recorder};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tracing::debug;

/// How many Events may wait for the API server (upstream's `maxQueuedEvents`).
pub const QUEUE_CAPACITY: usize = 1000;

/// Upstream's reasons (`pkg/kubelet/events`).
pub mod reason {
    /// A container was created.
    pub const CREATED: &str = "Created";
    /// A container was started.
    pub const STARTED: &str = "Started";
    /// Creating or starting a container, or getting its image, failed.
    pub const FAILED: &str = "Failed";
    /// A container is being stopped.
    pub const KILLING: &str = "Killing";
    /// A crashed container, or an image pull, waits out its back-off.
    pub const BACK_OFF: &str = "BackOff";
    /// A probe failed.
    pub const UNHEALTHY: &str = "Unhealthy";
    /// An image is being pulled.
    pub const PULLING: &str = "Pulling";
    /// An image is present (pulled, or already there).
    pub const PULLED: &str = "Pulled";
    /// An image is missing and its policy forbids pulling.
    pub const ERR_IMAGE_NEVER_PULL: &str = "ErrImageNeverPull";
    /// An image name cannot be parsed.
    pub const INSPECT_FAILED: &str = "InspectFailed";
    /// A volume could not be set up.
    pub const FAILED_MOUNT: &str = "FailedMount";
    /// The pod's sandbox is gone or not ready: it is created again.
    pub const SANDBOX_CHANGED: &str = "SandboxChanged";
    /// The pod's sandbox could not be created.
    pub const FAILED_CREATE_POD_SANDBOX: &str = "FailedCreatePodSandBox";
    /// The kubelet started (a Node event).
    pub const STARTING: &str = "Starting";
}

/// One Event waiting to be written.
#[derive(Debug, Clone)]
pub struct PendingEvent {
    /// What it is about.
    pub object: ObjectReference,
    /// Normal or Warning.
    pub event_type: EventType,
    /// The reason (see [`reason`]).
    pub reason: &'static str,
    /// The message.
    pub message: String,
}

/// The sending side: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct EventQueue {
    tx: mpsc::Sender<PendingEvent>,
    dropped: Counter,
}

impl EventQueue {
    /// A queue of `capacity` Events; the receiver goes to [`spawn_writer`].
    pub fn new(capacity: usize, dropped: Counter) -> (EventQueue, mpsc::Receiver<PendingEvent>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (EventQueue { tx, dropped }, rx)
    }

    /// Queues an Event; drops (and counts) it when the queue is full.
    pub fn send(&self, event: PendingEvent) {
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(e)) => {
                self.dropped.inc();
                debug!(reason = e.reason, "event queue full: event dropped");
            }
            // The writer is gone (the kubelet is stopping): nothing to do.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// An Event about a pod (`container`: about one of its containers, as upstream's
    /// `fieldPath` `spec.containers{name}` or `spec.initContainers{name}`).
    pub fn pod(&self, pod: &Pod, container: Option<&str>, event_type: EventType, reason: &'static str, message: String) {
        let mut object = coxswain_runtime::events::object_ref(pod);
        object.field_path = container.map(|name| container_field_path(pod, name));
        self.send(PendingEvent { object, event_type, reason, message });
    }

    /// An Event about the node `name` (upstream's kubelet refers to its Node with the
    /// name as UID, which is what `kubectl describe node` looks for).
    pub fn node(&self, name: &str, event_type: EventType, reason: &'static str, message: String) {
        let object = ObjectReference {
            kind: Some("Node".into()),
            name: Some(name.into()),
            uid: Some(name.into()),
            ..ObjectReference::default()
        };
        self.send(PendingEvent { object, event_type, reason, message });
    }
}

/// `spec.containers{name}` or `spec.initContainers{name}`.
pub fn container_field_path(pod: &Pod, name: &str) -> String {
    let init = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|l| l.iter().any(|c| c.name == name));
    if init { format!("spec.initContainers{{{name}}}") } else { format!("spec.containers{{{name}}}") }
}

/// Writes queued Events one at a time (the API server sees at most one of our Event
/// writes in flight, however many pods start at once).
pub fn spawn_writer(mut rx: mpsc::Receiver<PendingEvent>, recorder: Recorder, recorded: Counter) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            match recorder.try_record(&e.object, e.event_type, e.reason, &e.message).await {
                Ok(()) => {
                    recorded.inc();
                }
                Err(err) => debug!(reason = e.reason, error = %err, "event not recorded"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(reason: &'static str) -> PendingEvent {
        PendingEvent {
            object: ObjectReference::default(),
            event_type: EventType::Normal,
            reason,
            message: String::new(),
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let dropped = Counter::default();
        let (queue, mut rx) = EventQueue::new(2, dropped.clone());
        for r in ["Created", "Started", "Killing", "BackOff"] {
            queue.send(pending(r));
        }
        assert_eq!(dropped.get(), 2);
        // The first ones stay, in order.
        assert_eq!(rx.try_recv().unwrap().reason, "Created");
        assert_eq!(rx.try_recv().unwrap().reason, "Started");
        assert!(rx.try_recv().is_err());
        // Room again: accepted.
        queue.send(pending("Pulled"));
        assert_eq!(dropped.get(), 2);
        assert_eq!(rx.try_recv().unwrap().reason, "Pulled");
    }

    #[test]
    fn container_events_name_the_container_by_field_path() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"initContainers": [{"name": "init"}], "containers": [{"name": "c"}]},
        }))
        .unwrap();
        assert_eq!(container_field_path(&pod, "init"), "spec.initContainers{init}");
        assert_eq!(container_field_path(&pod, "c"), "spec.containers{c}");
        let dropped = Counter::default();
        let (queue, mut rx) = EventQueue::new(4, dropped);
        queue.pod(&pod, Some("c"), EventType::Normal, reason::STARTED, "Started container c".into());
        let e = rx.try_recv().unwrap();
        assert_eq!(e.object.kind.as_deref(), Some("Pod"));
        assert_eq!(e.object.uid.as_deref(), Some("u1"));
        assert_eq!(e.object.namespace.as_deref(), Some("ns"));
        assert_eq!(e.object.field_path.as_deref(), Some("spec.containers{c}"));
        queue.node("node-1", EventType::Normal, reason::STARTING, "Starting kubelet.".into());
        let e = rx.try_recv().unwrap();
        assert_eq!((e.object.kind.as_deref(), e.object.uid.as_deref()), (Some("Node"), Some("node-1")));
    }
}
