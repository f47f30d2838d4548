//! Retention on the leader: every `every`, decisions and gaps older than the age limit,
//! then the oldest decisions over the row limit, deleted in chunks
//! ([`palisade_audit::prune`]).

use std::sync::Arc;
use std::time::Duration;

use palisade_audit::{now_ms, prune, Retention};
use tokio_util::sync::CancellationToken;

use super::ingest::StoreSlot;
use super::metrics::AuditMetrics;
use crate::hub::Hub;

pub async fn run(
    mut store: StoreSlot,
    retention: Retention,
    every: Duration,
    hub: Arc<Hub>,
    metrics: AuditMetrics,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            r = store.changed() => if r.is_err() { return },
        }
        if !hub.is_leader() {
            continue;
        }
        let Some(s) = store.borrow().clone() else {
            continue;
        };
        match prune(s.as_ref(), now_ms(), &retention).await {
            Ok(p) => {
                metrics.pruned("age", p.by_age);
                metrics.pruned("size", p.by_size);
                metrics.pruned("gaps", p.gaps);
                if p.by_age + p.by_size + p.gaps > 0 {
                    tracing::info!(
                        by_age = p.by_age,
                        by_size = p.by_size,
                        gaps = p.gaps,
                        statements = p.chunks,
                        "audit log: retention"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "audit log: retention failed; next pass retries"),
        }
    }
}
