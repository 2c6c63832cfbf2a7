//! The one error type every store operation returns.

use std::path::PathBuf;

use crate::Revision;

/// A boxed error from a lower layer (redb, gRPC), kept as the `source` of an [`Error`].
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result of a store operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a store operation can fail with, identical for both backends.
///
/// Variants above [`Error::Open`] are the caller's business (the API server maps them to HTTP
/// statuses); a failed operation of those kinds changed nothing. The variants from
/// [`Error::Open`] down are about the backend itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key does not exist (API server: 404 Not Found).
    #[error("key {key} not found")]
    NotFound {
        /// The key that was looked up.
        key: String,
    },
    /// `create` found the key already present (API server: 409 AlreadyExists).
    #[error("key {key} already exists")]
    AlreadyExists {
        /// The key that was to be created.
        key: String,
    },
    /// A compare-and-swap failed: the key's mod revision is not the expected one
    /// (API server: 409 Conflict, "the object has been modified").
    #[error("conflict on key {key}: expected mod revision {expected}, current is {current}")]
    Conflict {
        /// The key that was to be changed.
        key: String,
        /// The mod revision the caller expected.
        expected: Revision,
        /// The key's actual mod revision.
        current: Revision,
    },
    /// The requested revision is older than the store's compacted revision: its history is gone
    /// (API server: 410 Gone, "too old resource version").
    #[error("revision {requested} has been compacted (compacted revision is {compacted})")]
    Compacted {
        /// The revision the caller asked for (for a watch: the revision it started after).
        requested: Revision,
        /// The oldest revision still readable.
        compacted: Revision,
    },
    /// The requested revision is newer than the store's current revision.
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision {
        /// The revision the caller asked for.
        requested: Revision,
        /// The store's revision when the request was served.
        current: Revision,
    },
    /// A revision argument is out of range (for example zero or negative where a real revision
    /// is required).
    #[error("invalid revision {revision}: {reason}")]
    InvalidRevision {
        /// The revision that was given.
        revision: Revision,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A key or prefix argument is malformed; see [`crate::MAX_KEY_SIZE`] and the key rules on
    /// [`crate::Store`].
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key that was given (truncated to 128 bytes).
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The value is larger than [`crate::MAX_VALUE_SIZE`].
    #[error("value of {size} bytes for key {key} exceeds the limit of {limit} bytes")]
    ValueTooLarge {
        /// The key the value was for.
        key: String,
        /// The value's size in bytes.
        size: usize,
        /// The limit, [`crate::MAX_VALUE_SIZE`].
        limit: usize,
    },
    /// A list continuation does not belong to the listed prefix.
    #[error("invalid continue token for prefix {prefix}: {reason}")]
    InvalidContinue {
        /// The prefix being listed.
        prefix: String,
        /// What is wrong with the token.
        reason: &'static str,
    },
    /// The embedded store could not be opened or created.
    #[error("failed to open store at {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: BoxError,
    },
    /// The embedded store's file was written by a newer Coxswain with a storage layout this
    /// version does not know.
    #[error(
        "store at {path} has format version {found}, newer than the supported version {supported}: \
         run a Coxswain release that supports it, or point the store at another path"
    )]
    UnsupportedFormat {
        /// The database file.
        path: PathBuf,
        /// The format version found in the file.
        found: i64,
        /// The newest format version this build reads ([`crate::FORMAT_VERSION`]).
        supported: i64,
    },
    /// The backend cannot be reached (etcd members down, no leader, the embedded store shut
    /// down). Reads and watches were retried before this was returned. For a write the outcome
    /// is unknown: the change may or may not have been applied, so read the key to find out.
    #[error("store unavailable: {message}")]
    Unavailable {
        /// What was tried.
        message: String,
        /// The last underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The backend failed in an unexpected way (I/O error, corrupted file, protocol error).
    #[error("failed to {op}: {source}")]
    Backend {
        /// What was being done, e.g. "commit a write transaction".
        op: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Wraps a lower-layer error as [`Error::Backend`].
    pub(crate) fn backend(op: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            op,
            source: source.into(),
        }
    }

    /// Builds [`Error::Unavailable`].
    pub(crate) fn unavailable(message: impl Into<String>, source: Option<BoxError>) -> Self {
        Error::Unavailable {
            message: message.into(),
            source,
        }
    }
}
