//! Revisioned key-value storage with etcd's semantics, behind one [`Store`] trait.
//!
//! Two backends implement it identically:
//! - [`EmbeddedStore`] (the default): a crash-safe single-file store on redb, nothing to install;
//! - [`EtcdStore`]: a real etcd 3.4+ cluster, for control planes that outgrow one machine.
//!
//! Both keep one strictly increasing revision for the whole store, every key carries its create
//! and mod revisions, writes are compare-and-swap, history stays readable (get, list, watch)
//! until a [`Compactor`] (or [`Store::compact`]) drops it.

mod compaction;
mod embedded;
mod encryption;
mod error;
mod etcd;
mod fanout;
mod store;
mod types;
mod validate;

pub use compaction::{Compactor, CompactorConfig, DEFAULT_COMPACTION_WINDOW};
pub use embedded::{EmbeddedConfig, EmbeddedStore, FORMAT_VERSION};
pub use encryption::{EncryptedStore, EncryptionConfig, EncryptionKey, EncryptionRule};
pub use error::{Error, Result};
pub use etcd::{DEFAULT_ETCD_PREFIX, EtcdConfig, EtcdStore};
pub use store::{Store, StoreConfig};
pub use types::{
    ContinueToken, Deleted, Event, KeyValue, ListOptions, ListResult, Revision, WatchStream,
};
pub use validate::{MAX_KEY_SIZE, MAX_VALUE_SIZE};
