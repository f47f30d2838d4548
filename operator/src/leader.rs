//! Leader election on a `coordination.k8s.io/v1` Lease, written with `Api<Lease>` as
//! client-go's `leaderelection` does:
//!
//! - every `retry_period` (2 s) the replica reads the Lease; if it is missing it creates it
//!   holding it; if it holds it, it renews it (`renewTime`); if another replica holds it, it
//!   takes it over only once the Lease has not changed for `lease_duration` (15 s) **as
//!   measured on this replica's clock since it last saw the Lease change** (no trust in the
//!   other replica's clock);
//! - every write is a `PUT` carrying the `resourceVersion` read, so two replicas can never
//!   both win: the loser gets a 409 Conflict;
//! - a leader that cannot renew for `renew_deadline` (10 s, less than the lease duration)
//!   steps down before anyone else may take over;
//! - on shutdown the leader stops leading, then releases the Lease (empty holder, 1 s
//!   duration) so that another replica takes over at once.
//!
//! Leadership is reported through [`Hub::set_leader`]: only the leader serves enforcers and
//! writes. The holder identity is the pod name.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use thiserror::Error;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::hub::Hub;
use crate::metrics::Metrics;

/// Where the Lease is and how it is held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseConfig {
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Error)]
pub enum LeaseError {
    #[error("Lease {namespace}/{name}: {source}")]
    Kube {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Acquires, renews and releases the Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The Lease's spec as last seen changing, and when (on this replica's clock).
    observed: Option<(LeaseSpec, Instant)>,
    /// The Lease as last read or written (for its resourceVersion).
    lease: Option<Lease>,
    clock: fn() -> Timestamp,
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            lease: None,
            clock: Timestamp::now,
        }
    }

    /// Replaces the wall clock written into `acquireTime` / `renewTime` (tests).
    pub fn with_clock(mut self, clock: fn() -> Timestamp) -> Self {
        self.clock = clock;
        self
    }

    fn error(&self, source: kube::Error) -> LeaseError {
        LeaseError::Kube {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            source,
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    fn observe(&mut self, lease: &Lease, now: Instant) {
        let spec = lease.spec.clone().unwrap_or_default();
        if self.observed.as_ref().map(|(s, _)| s) != Some(&spec) {
            self.observed = Some((spec, now));
        }
        self.lease = Some(lease.clone());
    }

    /// The holder of the Lease as last seen.
    pub fn holder(&self) -> Option<&str> {
        self.observed
            .as_ref()
            .and_then(|(s, _)| s.holder_identity.as_deref())
            .filter(|h| !h.is_empty())
    }

    /// One round: creates, renews or takes over the Lease if it may. Returns whether this
    /// replica holds it afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaseError> {
        let now = Instant::now();
        let stamp = MicroTime((self.clock)());
        let current = match self.api.get(&self.config.name).await {
            Ok(lease) => lease,
            Err(kube::Error::Api(s)) if s.is_not_found() => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.config.identity.clone()),
                        lease_duration_seconds: Some(self.duration_seconds()),
                        acquire_time: Some(stamp.clone()),
                        renew_time: Some(stamp),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(created) => {
                        self.observe(&created, now);
                        Ok(true)
                    }
                    Err(kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => {
                        Ok(false)
                    }
                    Err(e) => Err(self.error(e)),
                };
            }
            Err(e) => return Err(self.error(e)),
        };
        self.observe(&current, now);
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let mine = holder == Some(self.config.identity.as_str());
        if holder.is_some() && !mine {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.config.lease_duration, Duration::from_secs);
            let seen = self.observed.as_ref().map_or(now, |(_, at)| *at);
            if seen + duration > now {
                return Ok(false);
            }
        }
        let mut lease = current;
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.duration_seconds()),
            acquire_time: if mine {
                spec.acquire_time.clone()
            } else {
                Some(stamp.clone())
            },
            renew_time: Some(stamp),
            lease_transitions: if mine {
                spec.lease_transitions
            } else {
                Some(spec.lease_transitions.unwrap_or(0).saturating_add(1))
            },
            ..spec
        });
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(&updated, now);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Gives the Lease up (if this replica holds it as last seen): empty holder, 1 s.
    pub async fn release(&mut self) -> Result<(), LeaseError> {
        let Some(mut lease) = self.lease.clone() else {
            return Ok(());
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        let stamp = MicroTime((self.clock)());
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(stamp.clone()),
            renew_time: Some(stamp),
            ..spec
        });
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(&updated, Instant::now());
                Ok(())
            }
            Err(e) => Err(self.error(e)),
        }
    }

    /// Keeps trying to lead until `shutdown`, reporting leadership to the hub; releases the
    /// Lease on shutdown.
    pub async fn run(mut self, hub: Arc<Hub>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
        let mut leader = false;
        let mut last_renew: Option<Instant> = None;
        let mut failing = false;
        let set = |leader: bool| {
            hub.set_leader(leader);
            metrics.set_leader(leader);
        };
        loop {
            let round = tokio::select! {
                round = tokio::time::timeout(self.config.renew_deadline, self.try_acquire_or_renew()) => round,
                _ = shutdown.cancelled() => break,
            };
            let now = Instant::now();
            match round {
                Ok(Ok(true)) => {
                    last_renew = Some(now);
                    failing = false;
                    if !leader {
                        leader = true;
                        info!(identity = %self.config.identity, lease = %self.config.name, "leading");
                        set(true);
                    }
                }
                Ok(Ok(false)) => {
                    failing = false;
                    if leader {
                        leader = false;
                        warn!(
                            holder = self.holder().unwrap_or(""),
                            "lost the lease; no longer leading"
                        );
                        set(false);
                    }
                }
                failed => {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_string(),
                    };
                    if !failing {
                        warn!(error = %error, "lease round failed; retrying");
                    }
                    failing = true;
                    metrics.source_error("lease");
                    let overdue = last_renew
                        .is_none_or(|t| now.duration_since(t) >= self.config.renew_deadline);
                    if leader && overdue {
                        leader = false;
                        warn!("could not renew the lease in time; no longer leading");
                        set(false);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.retry_period) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        if leader {
            // Stop serving first, then let another replica take over at once.
            set(false);
            match tokio::time::timeout(self.config.retry_period, self.release()).await {
                Ok(Ok(())) => info!("lease released"),
                Ok(Err(e)) => warn!(error = %e, "could not release the lease"),
                Err(_) => warn!("releasing the lease timed out"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
