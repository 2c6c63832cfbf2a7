//! Connections to the etcd members, failover between them, and retries of transient errors.
//!
//! One client per member, used one at a time: requests go to the preferred member until it
//! fails transiently, then to the next one. (tonic's balanced channel keeps sending a share of
//! the requests to a dead member, and over a real network each one waits out the connect
//! timeout; sticking to a healthy member avoids both.)

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, KvClient, WatchClient};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::{Error, Result};

/// Responses up to this size are accepted from etcd (a large list).
const MAX_RESPONSE_BYTES: usize = 512 * 1024 * 1024;
/// First and largest pause between retries.
const BACKOFF_START: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// One etcd member's clients.
#[derive(Clone)]
pub(crate) struct Member {
    pub(crate) endpoint: String,
    pub(crate) kv: KvClient,
    pub(crate) watch: WatchClient,
}

/// How safe a failed request is to send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The request was not applied (no connection, no leader, rejected): retry anywhere.
    NotApplied,
    /// The member or connection failed after the request may have been sent: a read can be
    /// retried, a write's outcome is unknown.
    Unknown,
    /// The request itself failed (compacted revision, bad request): do not retry.
    Fatal,
}

/// gRPC status codes (fixed by the gRPC specification).
mod code {
    pub(super) const CANCELLED: i32 = 1;
    pub(super) const UNKNOWN: i32 = 2;
    pub(super) const DEADLINE_EXCEEDED: i32 = 4;
    pub(super) const RESOURCE_EXHAUSTED: i32 = 8;
    pub(super) const ABORTED: i32 = 10;
    pub(super) const OUT_OF_RANGE: i32 = 11;
    pub(super) const INTERNAL: i32 = 13;
    pub(super) const UNAVAILABLE: i32 = 14;
}

/// Classifies an etcd client error.
pub(crate) fn classify(error: &etcd_client::Error) -> Failure {
    use etcd_client::Error as E;
    match error {
        E::GRpcStatus(status) => classify_status(i32::from(status.code()), status.message()),
        E::TransportError(_) | E::EndpointError(_) => Failure::NotApplied,
        E::IoError(_) | E::WatchError(_) => Failure::Unknown,
        _ => Failure::Fatal,
    }
}

/// Classifies a gRPC status by code and message.
fn classify_status(status: i32, message: &str) -> Failure {
    match status {
        code::UNAVAILABLE | code::RESOURCE_EXHAUSTED => {
            if message.contains("no leader")
                || message.contains("too many requests")
                || message.contains("not capable")
                || is_connect_error(message)
            {
                Failure::NotApplied
            } else {
                Failure::Unknown
            }
        }
        code::DEADLINE_EXCEEDED
        | code::CANCELLED
        | code::UNKNOWN
        | code::ABORTED
        | code::INTERNAL => {
            if is_connect_error(message) {
                Failure::NotApplied
            } else {
                Failure::Unknown
            }
        }
        _ => Failure::Fatal,
    }
}

/// Whether a gRPC status is etcd's "out of range" (compacted or future revision).
pub(crate) fn is_out_of_range(error: &etcd_client::Error) -> Option<&str> {
    match error {
        etcd_client::Error::GRpcStatus(status)
            if i32::from(status.code()) == code::OUT_OF_RANGE =>
        {
            Some(status.message())
        }
        _ => None,
    }
}

fn is_connect_error(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("connect error")
        || message.contains("error trying to connect")
        || message.contains("connection refused")
        || message.contains("dns error")
}

/// Whether a request is a read (always retried on transient errors) or a write (retried only
/// when it was certainly not applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
}

/// Why [`Members::call`] failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// etcd answered with an error that retrying cannot fix.
    Server(etcd_client::Error),
    /// No member could serve the request in time (or a write's outcome is unknown).
    Unavailable(Error),
}

/// The etcd members and which one is preferred.
pub(crate) struct Members {
    members: Vec<Member>,
    preferred: AtomicUsize,
    pub(crate) request_timeout: Duration,
    pub(crate) retry_timeout: Duration,
}

impl std::fmt::Debug for Members {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Members")
            .field(
                "endpoints",
                &self.members.iter().map(|m| &m.endpoint).collect::<Vec<_>>(),
            )
            .field("preferred", &self.preferred.load(Ordering::Relaxed))
            .finish()
    }
}

impl Members {
    /// Creates a client per endpoint. Connections are lazy: this does not contact etcd.
    pub(crate) async fn connect(
        endpoints: &[String],
        connect_timeout: Duration,
        request_timeout: Duration,
        retry_timeout: Duration,
    ) -> Result<Members> {
        if endpoints.is_empty() {
            return Err(Error::unavailable("no etcd endpoint configured", None));
        }
        let mut members = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let options = ConnectOptions::new()
                .with_connect_timeout(connect_timeout)
                .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
                .with_keep_alive_while_idle(true)
                .with_require_leader(true);
            let client = Client::connect([endpoint.as_str()], Some(options))
                .await
                .map_err(|e| Error::backend("configure an etcd client", e))?;
            members.push(Member {
                endpoint: endpoint.clone(),
                kv: client
                    .kv_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES),
                watch: client
                    .watch_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES),
            });
        }
        Ok(Members {
            members,
            preferred: AtomicUsize::new(0),
            request_timeout,
            retry_timeout,
        })
    }

    /// The preferred member and its index.
    pub(crate) fn current(&self) -> (usize, Member) {
        let index = self.preferred.load(Ordering::Acquire) % self.members.len();
        (index, self.members[index].clone())
    }

    /// Moves away from member `index` after it failed (unless another caller already did).
    pub(crate) fn failed(&self, index: usize) {
        let next = (index + 1) % self.members.len();
        if self
            .preferred
            .compare_exchange(index, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && next != index
        {
            debug!(
                from = %self.members[index].endpoint,
                to = %self.members[next].endpoint,
                "switching etcd member"
            );
        }
    }

    /// Runs `request` against the preferred member, failing over and retrying transient
    /// failures (all of them for reads; for writes only those that certainly did not apply)
    /// until `retry_timeout`.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        what: &'static str,
        kind: Kind,
        mut request: F,
    ) -> Result<T, CallError>
    where
        F: FnMut(Member) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.retry_timeout;
        let mut backoff = BACKOFF_START;
        loop {
            let (index, member) = self.current();
            let endpoint = member.endpoint.clone();
            let (failure, error) =
                match tokio::time::timeout(self.request_timeout, request(member)).await {
                    Ok(Ok(value)) => return Ok(value),
                    Ok(Err(e)) => (classify(&e), e),
                    Err(_) => (
                        Failure::Unknown,
                        etcd_client::Error::WatchError(format!(
                            "no answer within {:?}",
                            self.request_timeout
                        )),
                    ),
                };
            match failure {
                Failure::Fatal => return Err(CallError::Server(error)),
                Failure::Unknown if kind == Kind::Write => {
                    self.failed(index);
                    warn!(%endpoint, error = %error, "etcd write failed with an unknown outcome");
                    return Err(CallError::Unavailable(Error::unavailable(
                        format!(
                            "failed to {what} on etcd member {endpoint}; the write may or may not have been applied"
                        ),
                        Some(Box::new(error)),
                    )));
                }
                _ => {
                    self.failed(index);
                    if Instant::now() + backoff > deadline {
                        return Err(CallError::Unavailable(Error::unavailable(
                            format!(
                                "failed to {what}: no etcd member answered within {:?}",
                                self.retry_timeout
                            ),
                            Some(Box::new(error)),
                        )));
                    }
                    debug!(%endpoint, error = %error, "retrying etcd request on a transient error");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_etcd_errors() {
        // (gRPC code, message, expected classification)
        let table = [
            (
                code::UNAVAILABLE,
                "etcdserver: no leader",
                Failure::NotApplied,
            ),
            (
                code::UNAVAILABLE,
                "tcp connect error: Connection refused (os error 111)",
                Failure::NotApplied,
            ),
            (
                code::UNAVAILABLE,
                "etcdserver: leader changed",
                Failure::Unknown,
            ),
            (
                code::UNAVAILABLE,
                "etcdserver: request timed out",
                Failure::Unknown,
            ),
            (code::UNKNOWN, "transport error", Failure::Unknown),
            (
                code::OUT_OF_RANGE,
                "etcdserver: mvcc: required revision has been compacted",
                Failure::Fatal,
            ),
            (3, "etcdserver: request is too large", Failure::Fatal),
        ];
        for (status, message, expected) in table {
            assert_eq!(classify_status(status, message), expected, "{message}");
        }
    }
}
