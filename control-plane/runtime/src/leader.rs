//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does:
//! a candidate takes the Lease when it is free or expired, the leader renews it every
//! `retry_period`, and a leader that cannot renew within `renew_deadline` gives up, so two
//! processes never both believe they lead for longer than the clock skew allows.
//! Writes are compare-and-swap on `resourceVersion`, so two candidates racing for an
//! expired Lease cannot both win.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tracing::{info, warn};

/// Where the Lease lives and how long leadership lasts.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Namespace of the Lease (upstream uses `kube-system`).
    pub namespace: String,
    /// Name of the Lease, e.g. `kube-scheduler`, `kube-controller-manager`.
    pub name: String,
    /// This candidate's identity (hostname plus a unique suffix).
    pub identity: String,
    /// How long a Lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up leadership.
    pub renew_deadline: Duration,
    /// How often candidates retry and the leader renews.
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// Upstream's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(name: impl Into<String>, identity: impl Into<String>) -> LeaderConfig {
        LeaderConfig {
            namespace: "kube-system".to_owned(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// A unique identity for this process: host name plus a random suffix.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "coxswain".to_owned());
    format!("{host}_{}", uuid::Uuid::new_v4())
}

/// Held while this process leads. [`Leadership::lost`] resolves when renewal failed for
/// longer than the renew deadline; dropping the guard stops renewing and releases the Lease.
#[derive(Debug)]
pub struct Leadership {
    lost: watch::Receiver<bool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl Leadership {
    /// Resolves once leadership is lost. The caller must then stop acting.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|lost| *lost).await;
    }

    /// Whether leadership is still held.
    pub fn is_leading(&self) -> bool {
        !*self.lost.borrow()
    }

    /// Stops renewing and releases the Lease so another candidate takes over at once.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(renewer) = self.renewer.take() {
            let _ = renewer.await;
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Errors of the election itself (API errors are retried, not returned).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("leader election for {0} was cancelled")]
    Cancelled(String),
}

enum Attempt {
    Acquired,
    HeldByOther(String),
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn expired(spec: &LeaseSpec, config: &LeaderConfig) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let duration = spec
        .lease_duration_seconds
        .map(|s| Duration::from_secs(s.max(0) as u64))
        .unwrap_or(config.lease_duration);
    let age = Timestamp::now().duration_since(renewed.0);
    !age.is_negative() && age.unsigned_abs() > duration
}

async fn try_acquire_or_renew(api: &Api<Lease>, config: &LeaderConfig) -> Result<Attempt, kube::Error> {
    let duration_secs = i32::try_from(config.lease_duration.as_secs()).unwrap_or(i32::MAX);
    match api.get_opt(&config.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    namespace: Some(config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(config.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Acquired),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::HeldByOther(String::new())),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            let holder = spec.holder_identity.clone().unwrap_or_default();
            let ours = holder == config.identity;
            if !ours && !holder.is_empty() && !expired(spec, config) {
                return Ok(Attempt::HeldByOther(holder));
            }
            if !ours {
                spec.holder_identity = Some(config.identity.clone());
                spec.acquire_time = Some(now());
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.renew_time = Some(now());
            spec.lease_duration_seconds = Some(duration_secs);
            // replace carries resourceVersion: a concurrent writer makes this a 409.
            match api.replace(&config.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Acquired),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::HeldByOther(holder)),
                Err(e) => Err(e),
            }
        }
    }
}

async fn release(api: &Api<Lease>, config: &LeaderConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else { return };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    spec.acquire_time = None;
    if let Err(e) = api.replace(&config.name, &PostParams::default(), &lease).await {
        warn!(lease = %config.name, error = %e, "could not release the lease");
    } else {
        info!(lease = %config.name, "released leadership");
    }
}

/// Blocks until this candidate holds the Lease, then keeps renewing it in the background.
/// Resolves to an error only if `cancel` fires first.
pub async fn acquire(
    client: Client,
    config: LeaderConfig,
    cancel: impl std::future::Future<Output = ()>,
) -> Result<Leadership, Error> {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut cancel = std::pin::pin!(cancel);
    let mut last_holder = None;
    loop {
        match try_acquire_or_renew(&api, &config).await {
            Ok(Attempt::Acquired) => break,
            Ok(Attempt::HeldByOther(holder)) => {
                if last_holder.as_ref() != Some(&holder) {
                    info!(lease = %config.name, %holder, "waiting for leadership");
                    last_holder = Some(holder);
                }
            }
            Err(e) => warn!(lease = %config.name, error = %e, "leader election attempt failed"),
        }
        tokio::select! {
            _ = &mut cancel => return Err(Error::Cancelled(config.name.clone())),
            _ = tokio::time::sleep(config.retry_period) => {}
        }
    }
    info!(lease = %config.name, identity = %config.identity, "acquired leadership");
    let (lost_tx, lost) = watch::channel(false);
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let renewer = tokio::spawn(async move {
        let mut last_renewal = Instant::now();
        loop {
            tokio::select! {
                _ = &mut stopped => {
                    release(&api, &config).await;
                    return;
                }
                _ = tokio::time::sleep(config.retry_period) => {}
            }
            match try_acquire_or_renew(&api, &config).await {
                Ok(Attempt::Acquired) => last_renewal = Instant::now(),
                Ok(Attempt::HeldByOther(holder)) => {
                    warn!(lease = %config.name, %holder, "leadership taken by another candidate");
                    let _ = lost_tx.send(true);
                    return;
                }
                Err(e) => warn!(lease = %config.name, error = %e, "could not renew leadership"),
            }
            if last_renewal.elapsed() > config.renew_deadline {
                warn!(lease = %config.name, "renew deadline passed: leadership lost");
                let _ = lost_tx.send(true);
                return;
            }
        }
    });
    Ok(Leadership {
        lost,
        stop: Some(stop),
        renewer: Some(renewer),
    })
}
