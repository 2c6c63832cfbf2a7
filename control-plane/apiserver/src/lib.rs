//! The Kubernetes REST API on axum over [`coxswain_store`].
//!
//! Every served kind is one row of the [`Registry`]; generic handlers (one module per verb)
//! serve them all: CRUD with optimistic concurrency on `resourceVersion` (the store's mod
//! revision), lists with selectors and pagination, watches fanned out from one store watch
//! per resource by the watch cache, the four patch types, discovery (including aggregated
//! discovery), tables for `kubectl get`, and `Status` bodies for every error.

mod allocator;
mod codec;
mod defaults;
mod discovery;
mod fieldmanager;
mod handlers;
mod kubernetes_service;
mod metrics;
mod namespaces;
mod object;
mod openapi;
mod protobuf;
mod registry;
mod request_info;
mod security;
mod selectors;
mod server;
mod status;
mod storage;
mod strategic;
mod table;
mod validation;
mod watch_cache;

pub use namespaces::BUILTIN_NAMESPACES;
pub use registry::{NameRule, Registry, ResourceType, Subresource};
pub use request_info::RequestInfo;
pub use security::encryption::parse_encryption_config;
pub use security::{Security, ServingCert, SubjectNames};
pub use server::{ApiServer, Error, MAX_BODY_BYTES, ServerConfig};
pub use status::{ApiError, Cause, Target};
