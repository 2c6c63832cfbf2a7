//! Revisioned key-value storage with watch (work in progress).
