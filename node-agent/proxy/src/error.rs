//! Errors of the sync engine.

use coxswain_dataplane::MapWriteError;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a sync can fail with.
///
/// A failed sync leaves every map state it went through consistent for the
/// kernel (each operation is ordered so), and the frontends it did not finish
/// are retried by the next sync or by [`crate::ProxyState::full_resync`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A map operation failed (in the kernel: map full, permission, ...).
    #[error("failed to {op}: {source}")]
    MapWrite {
        /// The operation and entry, e.g. "update slot 2 of 10.96.0.10:80/TCP scope all".
        op: String,
        /// What the map implementation reported.
        #[source]
        source: Box<MapWriteError>,
    },
    /// Every id the maps can hold is taken.
    #[error("failed to allocate a {what} id: all {max} ids are in use")]
    IdsExhausted {
        /// "backend" or "service".
        what: &'static str,
        /// The size of the id space (the map's capacity).
        max: u32,
    },
    /// An object without `metadata.name` (the API server always sets it).
    #[error("failed to index {kind}: metadata.name is missing")]
    MissingName {
        /// "Service" or "EndpointSlice".
        kind: &'static str,
    },
    /// `adopt` after the first full resync: adoption describes the maps a
    /// previous agent left, which this one has written to since.
    #[error(
        "failed to adopt the map state: this agent has already synced the maps; adopt before the first full_resync"
    )]
    AdoptAfterSync,
}

impl Error {
    pub(crate) fn map_write(op: String, source: MapWriteError) -> Self {
        Error::MapWrite {
            op,
            source: Box::new(source),
        }
    }
}
