//! The API server's front door, as pieces that need no HTTP stack and no store: the cluster
//! PKI ([`pki`]), who is asking ([`authn`]), what they may do ([`rbac`], with the default
//! policy in [`policy`]), and kubeconfig files carrying credentials ([`kubeconfig`]).
//!
//! `coxswain-apiserver` wires these into its tower layers (authentication, then
//! authorization, then admission) and keeps the RBAC snapshot current from its watch caches.

pub mod authn;
pub mod kubeconfig;
pub mod pki;
pub mod podsecurity;
pub mod policy;
pub mod rbac;
pub mod satoken;

pub use authn::UserInfo;
pub use rbac::{Attributes, RbacPolicy};
