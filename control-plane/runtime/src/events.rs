//! Records `core/v1` Events about objects, the way client-go's legacy recorder does: the
//! first occurrence creates an Event, repeats of the same (object, type, reason, message)
//! bump its `count` and `lastTimestamp` instead of creating new objects.
//!
//! kube-runtime's `events::Recorder` writes `events.k8s.io/v1` Events; `kubectl describe`
//! lists `core/v1` Events, which is all our API server serves, so we keep our own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::Mutex;
use tracing::debug;

/// Recent Events by what they say, and when expired entries were last swept.
#[derive(Debug, Default)]
struct SeenCache {
    events: HashMap<Key, Seen>,
    swept: Option<Timestamp>,
}

impl SeenCache {
    /// Forgets entries older than [`AGGREGATE_FOR`], at most once a second (a sweep walks
    /// every entry; recording thousands of Events a second must not walk them each time).
    fn sweep(&mut self, now: Timestamp) {
        let due = self
            .swept
            .is_none_or(|t| now.duration_since(t).unsigned_abs() >= Duration::from_secs(1));
        if due {
            self.events
                .retain(|_, s| now.duration_since(s.at).unsigned_abs() < AGGREGATE_FOR);
            self.swept = Some(now);
        }
    }
}

/// How long a recorded Event is remembered for aggregation.
const AGGREGATE_FOR: Duration = Duration::from_secs(600);
/// Bound on remembered Events, so a storm of distinct messages cannot grow memory forever.
const MAX_REMEMBERED: usize = 4096;

/// `Normal` or `Warning`, as Event `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    namespace: String,
    name: String,
    event_type: EventType,
    reason: String,
    message: String,
}

#[derive(Debug, Clone)]
struct Seen {
    event_name: String,
    count: i32,
    at: Timestamp,
}

/// Writes Events for one component (`source.component`, e.g. `deployment-controller`).
/// Cheap to clone; clones share the aggregation cache.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: String,
    host: Option<String>,
    seen: Arc<Mutex<SeenCache>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("component", &self.component)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// A reference to `obj` for an Event's `involvedObject`.
pub fn object_ref<K>(obj: &K) -> ObjectReference
where
    K: Resource<DynamicType = ()>,
{
    let meta = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        field_path: None,
    }
}

impl Recorder {
    /// A recorder for `component`; `host` fills `source.host` (the node, for kubelets).
    pub fn new(client: Client, component: impl Into<String>, host: Option<String>) -> Recorder {
        Recorder {
            client,
            component: component.into(),
            host,
            seen: Arc::default(),
        }
    }

    /// The component name Events carry.
    pub fn component(&self) -> &str {
        &self.component
    }

    /// Records an Event about `object`. Failures are logged, never returned: an Event that
    /// cannot be written must not fail the reconciliation that produced it.
    pub async fn record(
        &self,
        object: &ObjectReference,
        event_type: EventType,
        reason: &str,
        message: &str,
    ) {
        if let Err(e) = self.try_record(object, event_type, reason, message).await {
            debug!(component = %self.component, reason, error = %e, "event not recorded");
        }
    }

    /// Like [`Recorder::record`], returning the API error.
    pub async fn try_record(
        &self,
        object: &ObjectReference,
        event_type: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let namespace = object
            .namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        let key = Key {
            uid: object.uid.clone().unwrap_or_default(),
            namespace: namespace.clone(),
            name: object.name.clone().unwrap_or_default(),
            event_type,
            reason: reason.to_owned(),
            message: message.to_owned(),
        };
        let now = Timestamp::now();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        // The cache lock is held only around map accesses, never across an API call, so
        // many reconcilers record concurrently. Two racing repeats may both patch the same
        // count: an undercount of a repeat, never a lost Event.
        let prev = {
            let mut seen = self.seen.lock().await;
            seen.sweep(now);
            seen.events
                .get(&key)
                .filter(|s| now.duration_since(s.at).unsigned_abs() < AGGREGATE_FOR)
                .cloned()
        };
        if let Some(prev) = prev {
            let count = prev.count + 1;
            let patch = serde_json::json!({
                "count": count,
                "lastTimestamp": Time(now),
            });
            match api
                .patch(&prev.event_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.seen.lock().await.events.insert(
                        key,
                        Seen {
                            event_name: prev.event_name,
                            count,
                            at: now,
                        },
                    );
                    return Ok(());
                }
                // The Event was deleted (TTL, namespace cleanup): write a new one.
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    self.seen.lock().await.events.remove(&key);
                }
                Err(e) => return Err(e),
            }
        }
        let object_name = object.name.clone().unwrap_or_default();
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{object_name}.")),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: object.clone(),
            type_: Some(event_type.as_str().to_owned()),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.host.clone().unwrap_or_else(|| self.component.clone())),
            action: Some(reason.to_owned()),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: self.host.clone(),
            }),
            ..Event::default()
        };
        let created = api.create(&PostParams::default(), &event).await?;
        let mut seen = self.seen.lock().await;
        if seen.events.len() >= MAX_REMEMBERED {
            seen.events.clear();
        }
        seen.events.insert(
            key,
            Seen {
                event_name: created.name_any(),
                count: 1,
                at: now,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key {
            uid: name.to_owned(),
            namespace: "default".to_owned(),
            name: name.to_owned(),
            event_type: EventType::Normal,
            reason: "Scheduled".to_owned(),
            message: String::new(),
        }
    }

    fn seen(at: Timestamp) -> Seen {
        Seen {
            event_name: "e".to_owned(),
            count: 1,
            at,
        }
    }

    #[test]
    fn expired_events_are_swept_at_most_once_a_second() {
        let t0: Timestamp = "2026-11-01T00:00:00Z".parse().unwrap();
        let at = |millis: i64| t0.checked_add(jiff::SignedDuration::from_millis(millis)).unwrap();
        let mut cache = SeenCache::default();
        cache.events.insert(key("old"), seen(t0));
        cache.events.insert(key("new"), seen(at(500_000)));
        cache.sweep(at(599_500));
        assert_eq!(cache.events.len(), 2, "nothing expired yet");
        // "old" expired at 600 s, but the last sweep was under a second ago.
        cache.sweep(at(600_200));
        assert!(cache.events.contains_key(&key("old")));
        cache.sweep(at(600_600));
        assert!(!cache.events.contains_key(&key("old")));
        assert!(cache.events.contains_key(&key("new")));
    }
}
