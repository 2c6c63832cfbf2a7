//! What Coxswain's scheduler and controllers share, beyond kube-runtime's watchers,
//! reflectors and controllers: an [`events::Recorder`] that writes `core/v1` Events (the ones
//! `kubectl describe` shows), and [`leader`] election on a `coordination.k8s.io/v1` Lease so
//! that several control-plane processes never act twice.
//!
//! Both talk to the cluster only through the API server, so they work against any
//! Kubernetes API server.

pub mod events;
pub mod leader;
