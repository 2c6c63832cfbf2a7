//! Resource quantities and what objects use of them, shared by the API server's admission
//! (LimitRanger, ResourceQuota), the resourcequota controller and the scheduler.
//!
//! - [`quantity`]: upstream's `resource.Quantity` (parse, exact arithmetic, canonical form)
//!   and resource lists.
//! - [`pod`]: a pod's requests, limits and QoS class, as upstream's `resourcehelper`.
//! - [`quota`]: the quota evaluators (resource names, usage, scopes), admission's check and
//!   the controller's recount.

pub mod pod;
pub mod quantity;
pub mod quota;

pub use quantity::{Format, ParseError, Quantity, ResourceList};
