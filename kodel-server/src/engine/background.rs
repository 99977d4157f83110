//! The engine's background work. One sweep per tick asks, in a single statement across
//! the org schemas, which orgs have expired job leases, time-based rules, webhook
//! calls due or paused jobs (which go on once no budget holds them back), and only
//! those are visited. The orgs asked are only those that have running or paused jobs,
//! enabled time-based rules or pending webhook calls, as counted by triggers in
//! `public.job_states` and `public.sweep_work`: an idle org costs the sweep nothing. Commits that queue webhooks wake the sender
//! at once; retries are woken when they fall due.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kodel_core::OrgSlug;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::AppState;
use crate::engine::{jobs, rules, webhooks};
use crate::error::ApiResult;
use crate::db::OrgTx;

/// Orgs per sweep statement.
const SWEEP_CHUNK: usize = 200;

#[derive(Clone)]
pub struct Background {
    wake: mpsc::UnboundedSender<(Uuid, OrgSlug)>,
    pub tick: Duration,
    pub webhook_retry: Duration,
}

impl Background {
    pub fn new(tick: Duration, webhook_retry: Duration) -> (Self, mpsc::UnboundedReceiver<(Uuid, OrgSlug)>) {
        let (wake, rx) = mpsc::unbounded_channel();
        (Self { wake, tick, webhook_retry }, rx)
    }

    /// A commit queued webhook calls for this org.
    pub fn webhooks_due(&self, slug: &OrgSlug, org_id: Uuid) {
        let _ = self.wake.send((org_id, slug.clone()));
    }
}

/// Starts the sweep and the webhook sender. They stop when the runtime does.
pub fn spawn(state: AppState, wakes: mpsc::UnboundedReceiver<(Uuid, OrgSlug)>) {
    tokio::spawn(send_webhooks(state.clone(), wakes));
    tokio::spawn(async move {
        // The first sweep one tick after start, not during it.
        let tick = state.background.tick;
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(e) = sweep(&state).await {
                tracing::warn!(error = %e.message, "engine sweep failed; will try again");
            }
        }
    });
}

async fn send_webhooks(state: AppState, mut wakes: mpsc::UnboundedReceiver<(Uuid, OrgSlug)>) {
    // Orgs with a retry timer already set, so a burst of wakes sets one timer each.
    let timers: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
    while let Some((org_id, slug)) = wakes.recv().await {
        match webhooks::deliver_due(&state, org_id, &slug, state.background.webhook_retry).await {
            Ok(Some(next)) => {
                if timers.lock().unwrap_or_else(|p| p.into_inner()).insert(org_id) {
                    let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
                    let (bg, timers) = (state.background.clone(), timers.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        timers.lock().unwrap_or_else(|p| p.into_inner()).remove(&org_id);
                        bg.webhooks_due(&slug, org_id);
                    });
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(org = %slug, error = %e.message, "webhook delivery failed; the sweep will retry"),
        }
    }
}

/// One pass: finds the orgs with due work and does it.
pub async fn sweep(state: &AppState) -> ApiResult<()> {
    let orgs = candidates(state).await?;
    for chunk in orgs.chunks(SWEEP_CHUNK) {
        // Schema names come from validated slugs, quoted as identifiers.
        let parts: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(i, (_, slug))| {
                let schema = slug.quoted_schema();
                format!(
                    "SELECT {i} AS i,
                        EXISTS (SELECT 1 FROM {schema}.ai_jobs WHERE state = 'running' AND lease_expires_at < now()) AS leases,
                        EXISTS (SELECT 1 FROM {schema}.automation_rules WHERE enabled AND trigger_kind IN ('schedule', 'stale')) AS timed,
                        EXISTS (SELECT 1 FROM {schema}.webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= now()) AS hooks,
                        EXISTS (SELECT 1 FROM {schema}.ai_jobs WHERE state = 'paused') AS paused"
                )
            })
            .collect();
        let due: Vec<(i32, bool, bool, bool, bool)> = sqlx::query_as(&parts.join(" UNION ALL ")).fetch_all(&state.pool).await?;
        for (i, leases, timed, hooks, paused) in due {
            let Some((org_id, slug)) = chunk.get(i as usize) else { continue };
            if leases {
                let mut db = OrgTx::begin(&state.pool, *org_id, slug).await?;
                jobs::expire_leases(&mut db).await?;
                state.commit(db).await?;
            }
            if timed {
                let mut db = OrgTx::begin(&state.pool, *org_id, slug).await?;
                rules::run_timed(&mut db, chrono::Utc::now()).await?;
                state.commit(db).await?;
            }
            if hooks {
                state.background.webhooks_due(slug, *org_id);
            }
            // Paused jobs go on once no budget holds them back (a new month began, a
            // budget was changed behind the API's back).
            if paused {
                let mut db = OrgTx::begin(&state.pool, *org_id, slug).await?;
                jobs::resume_paused(&mut db, None, None, None).await?;
                state.commit(db).await?;
            }
        }
    }
    Ok(())
}

/// The orgs a sweep looks at: those with running or paused jobs (counted in
/// `public.job_states`), enabled time-based rules or pending webhook calls
/// (`public.sweep_work`). An org with none of these is not asked about at all.
pub async fn candidates(state: &AppState) -> ApiResult<Vec<(Uuid, OrgSlug)>> {
    let orgs: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT o.id, o.slug FROM public.orgs o
         WHERE o.migration_error IS NULL AND o.schema_version >= $1
           AND o.slug IN (SELECT substr(schema_name, 5) FROM public.job_states WHERE state IN ('running', 'paused') AND n > 0
                          UNION SELECT substr(schema_name, 5) FROM public.sweep_work WHERE n > 0)
         ORDER BY o.slug",
    )
    .bind(crate::db::migrate::tenant_version())
    .fetch_all(&state.pool)
    .await?;
    Ok(orgs.into_iter().filter_map(|(id, s)| Some((id, OrgSlug::parse(&s).ok()?))).collect())
}
