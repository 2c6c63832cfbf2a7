//! Errors of the scheduler.

/// Why [`crate::Scheduler::run`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A watch stream ended (they retry on their own; this means the client was closed).
    #[error("failed to watch {0}: the watch stream ended")]
    WatchEnded(&'static str),
    /// The configuration cannot work.
    #[error("invalid scheduler configuration: {0}")]
    InvalidConfig(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
