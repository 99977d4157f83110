//! Live feeds of task events: what the SSE streams follow.
//!
//! Ordering. Event ids come from a sequence, so two transactions can commit their
//! events out of id order. Streams therefore deliver events in `(xid, id)` order and
//! only those whose transaction is older than the oldest one still running
//! (`pg_snapshot_xmin`). That prefix never grows in the middle, so a client that
//! resumes after an event gets every later one exactly once.
//!
//! Fan-out. One pump per org with subscribers reads new events and broadcasts them on
//! a bounded channel; a subscriber that lags catches up from the database instead of
//! slowing others. Commits wake the local pump directly and other replicas through
//! `NOTIFY kodel_events` (sent outside the writing transaction, coalesced).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use kodel_core::OrgSlug;
use kodel_core::api::Event;
use kodel_core::events::{EventKind, TaskEvent};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, broadcast, mpsc};
use uuid::Uuid;

use crate::db::scoped::begin_scoped;

const CHANNEL: &str = "kodel_events";
const FEED_CAPACITY: usize = 1024;
const PAGE: i64 = 500;
/// How long changes are gathered before other replicas are notified.
const NOTIFY_WINDOW: Duration = Duration::from_millis(10);

/// Where an event sits in delivery order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub xid: i64,
    pub id: i64,
}

#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub pos: Pos,
    pub task_id: Uuid,
    pub project_id: Uuid,
    /// The event's type (its wire name).
    pub kind: String,
    /// The event (`api::Event`) as JSON, made once however many subscribers send it.
    /// Empty in a feed's notice of an event too large to hold (`whole` false).
    pub json: Arc<str>,
    /// False in the feed's notice of an event over `RING_EVENT_BYTES`: the event itself
    /// is in the feed's `large` store, or else in the database.
    pub whole: bool,
}

/// The largest event that goes whole through a feed's ring. The ring keeps each event
/// until every follower has read it, so followers that stop reading (a stalled client)
/// would otherwise pin `FEED_CAPACITY` events of up to 100 KB each (a comment).
const RING_EVENT_BYTES: usize = 16 * 1024;
/// What a feed keeps of the larger events, newest first, for followers that keep up.
/// One that falls further behind reads them from the database.
const LARGE_BYTES: usize = 8 * 1024 * 1024;
/// What all the feeds of a server keep of larger events together, so streams held on
/// many orgs cannot pin more: past it, a large event goes out as a notice only and
/// followers read it from the database.
const LARGE_SERVER_BYTES: usize = 64 * 1024 * 1024;

/// Output of the moment (an agent's text and tool output), shown to whoever watches
/// the task now and never stored: what it adds up to is stored as a step.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    pub task_id: Uuid,
    pub project_id: Uuid,
    pub kind: EventKind,
    pub json: Arc<str>,
}

impl LiveEvent {
    /// Shaped like a stored event (`type`, `task`, `payload`), without an id.
    pub fn new(task_id: Uuid, project_id: Uuid, task: &str, event: TaskEvent) -> Self {
        let json = serde_json::json!({ "type": event.kind().as_str(), "task": task, "payload": event.payload() });
        Self { task_id, project_id, kind: event.kind(), json: json.to_string().into() }
    }
}

const LIVE_CAPACITY: usize = 1024;

#[derive(sqlx::FromRow)]
struct EventRow {
    id: i64,
    xid: i64,
    task_id: Uuid,
    project_id: Uuid,
    seq: i32,
    kind: String,
    payload: serde_json::Value,
    created_at: DateTime<Utc>,
    task: String,
    actor: Option<String>,
    safe: bool,
}

/// Events after `after` in delivery order (optionally of one task), each with whether
/// it is safe to deliver yet. Safe rows always come first.
pub async fn load(
    conn: &mut PgConnection,
    after: Pos,
    task: Option<Uuid>,
    limit: i64,
) -> Result<Vec<(StoredEvent, bool)>, sqlx::Error> {
    // Two statements rather than `($3 IS NULL OR task_id = $3)`, so each keeps a plan
    // that uses its own index.
    let filter = if task.is_some() { "AND e.task_id = $3" } else { "AND $3::uuid IS NULL" };
    let sql = format!(
        "SELECT e.id, e.xid::text::bigint AS xid, e.task_id, e.project_id, e.seq, e.type AS kind,
                e.payload, e.created_at, p.key || '-' || t.number AS task, u.email AS actor,
                e.xid < pg_snapshot_xmin(pg_current_snapshot()) AS safe
         FROM task_events e
         JOIN tasks t ON t.id = e.task_id
         JOIN projects p ON p.id = t.project_id
         LEFT JOIN public.users u ON u.id = e.actor_id
         WHERE (e.xid, e.id) > ($1::text::xid8, $2) {filter}
         ORDER BY e.xid, e.id
         LIMIT $4"
    );
    let rows = sqlx::query_as::<_, EventRow>(&sql)
        .bind(after.xid.to_string())
        .bind(after.id)
        .bind(task)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let safe = r.safe;
            let event = Event {
                id: r.id,
                kind: r.kind,
                task: r.task,
                seq: r.seq,
                actor: r.actor,
                payload: r.payload,
                created_at: r.created_at,
            };
            let json = serde_json::to_string(&event).unwrap_or_default().into();
            let ev = StoredEvent { pos: Pos { xid: r.xid, id: r.id }, task_id: r.task_id, project_id: r.project_id, kind: event.kind, json, whole: true };
            (ev, safe)
        })
        .collect())
}

/// The position of a persisted event id, for resuming after it.
pub async fn position_of(conn: &mut PgConnection, id: i64) -> Result<Option<Pos>, sqlx::Error> {
    let xid: Option<i64> = sqlx::query_scalar("SELECT xid::text::bigint FROM task_events WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(xid.map(|xid| Pos { xid, id }))
}

#[derive(Clone)]
pub struct EventHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    pool: PgPool,
    feeds: Mutex<HashMap<String, Arc<Feed>>>,
    remote: mpsc::UnboundedSender<String>,
    /// Bytes held in all feeds' `large` stores.
    large_bytes: Arc<AtomicUsize>,
}

/// One org's live feed.
pub struct Feed {
    slug: OrgSlug,
    /// The newest events too large for the ring, at most `LARGE_BYTES` of them.
    large: Mutex<(std::collections::VecDeque<Arc<StoredEvent>>, usize)>,
    /// The server-wide count of such bytes (`LARGE_SERVER_BYTES`).
    large_total: Arc<AtomicUsize>,
    tx: broadcast::Sender<Arc<StoredEvent>>,
    live: broadcast::Sender<Arc<LiveEvent>>,
    wake: Notify,
    cursor: Mutex<Option<Pos>>,
    ready: Notify,
}

struct Subscription {
    pub rx: broadcast::Receiver<Arc<StoredEvent>>,
    /// Live output (best effort: a lagging subscriber skips some).
    pub live: broadcast::Receiver<Arc<LiveEvent>>,
    /// Everything at or before this was delivered before the subscription began.
    pub start: Pos,
    pub feed: Arc<Feed>,
}

impl EventHub {
    pub fn new(pool: PgPool) -> Self {
        let (remote, remote_rx) = mpsc::unbounded_channel();
        let hub = Self { inner: Arc::new(HubInner { pool, feeds: Mutex::new(HashMap::new()), remote, large_bytes: Arc::default() }) };
        tokio::spawn(notify_replicas(hub.inner.pool.clone(), remote_rx));
        tokio::spawn(listen_replicas(hub.clone()));
        hub
    }

    /// Called after a commit that wrote events for this org.
    pub fn changed(&self, slug: &OrgSlug) {
        self.wake_local(slug.as_str());
        let _ = self.inner.remote.send(slug.as_str().to_owned());
    }

    fn wake_local(&self, slug: &str) {
        let feed = self.lock_feeds().get(slug).cloned();
        if let Some(feed) = feed {
            feed.wake.notify_one();
        }
    }

    fn wake_all(&self) {
        for feed in self.lock_feeds().values() {
            feed.wake.notify_one();
        }
    }

    fn lock_feeds(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Feed>>> {
        self.inner.feeds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shows live output to the org's subscribers on this server (nobody: dropped).
    pub fn live(&self, slug: &OrgSlug, ev: LiveEvent) {
        let feed = self.lock_feeds().get(slug.as_str()).cloned();
        if let Some(feed) = feed {
            let _ = feed.live.send(Arc::new(ev));
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Live events of an org from now on.
    async fn subscribe(&self, slug: &OrgSlug) -> Subscription {
        // A receiver taken under the map lock keeps a new feed's pump from finding
        // nobody listening before the real receiver below exists.
        let (feed, _holding) = {
            let mut feeds = self.lock_feeds();
            let feed = feeds
                .entry(slug.as_str().to_owned())
                .or_insert_with(|| {
                    let feed = Arc::new(Feed {
                        slug: slug.clone(),
                        large: Mutex::default(),
                        large_total: self.inner.large_bytes.clone(),
                        tx: broadcast::channel(FEED_CAPACITY).0,
                        live: broadcast::channel(LIVE_CAPACITY).0,
                        wake: Notify::new(),
                        cursor: Mutex::new(None),
                        ready: Notify::new(),
                    });
                    tokio::spawn(pump(self.clone(), feed.clone()));
                    feed
                })
                .clone();
            let holding = feed.tx.subscribe();
            (feed, holding)
        };
        loop {
            let ready = feed.ready.notified();
            // Receiver and start position are taken under the cursor lock, which the
            // pump holds while it publishes: every event is either before `start` or
            // in `rx`, never neither.
            {
                let cursor = feed.lock_cursor();
                if let Some(start) = *cursor {
                    return Subscription { rx: feed.tx.subscribe(), live: feed.live.subscribe(), start, feed: feed.clone() };
                }
            }
            ready.await;
        }
    }
}

impl EventHub {
    /// Follows an org's events from now, or from after the event `resume` (a client's
    /// `Last-Event-ID`).
    pub async fn follow(&self, slug: &OrgSlug, task: Option<Uuid>, resume: Option<i64>) -> Follower {
        let sub = self.subscribe(slug).await;
        Follower {
            pool: self.pool().clone(),
            slug: slug.clone(),
            task,
            rx: sub.rx,
            live: sub.live,
            feed: sub.feed,
            last: sub.start,
            resume,
            catching_up: false,
            pending: Default::default(),
        }
    }
}

impl Feed {
    fn lock_cursor(&self) -> std::sync::MutexGuard<'_, Option<Pos>> {
        self.cursor.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the cursor to an event and publishes it, as one step for subscribers. An
    /// event over `RING_EVENT_BYTES` goes to the `large` store and the ring carries a
    /// notice of it without its JSON.
    fn publish(&self, ev: StoredEvent) {
        let ev = if ev.json.len() > RING_EVENT_BYTES {
            let notice = StoredEvent { json: Arc::from(""), whole: false, kind: ev.kind.clone(), ..ev };
            let mut large = self.large.lock().unwrap_or_else(|p| p.into_inner());
            let (events, bytes) = &mut *large;
            let size = ev.json.len();
            while *bytes + size > LARGE_BYTES
                && let Some(old) = events.pop_front()
            {
                *bytes -= old.json.len();
                self.large_total.fetch_sub(old.json.len(), Ordering::Relaxed);
            }
            // Kept only within the feed's and the server's budgets.
            if size <= LARGE_BYTES && self.large_total.fetch_add(size, Ordering::Relaxed) + size <= LARGE_SERVER_BYTES {
                *bytes += size;
                events.push_back(Arc::new(ev));
            } else {
                self.large_total.fetch_sub(size, Ordering::Relaxed);
            }
            notice
        } else {
            ev
        };
        let mut cursor = self.lock_cursor();
        *cursor = Some(ev.pos);
        let _ = self.tx.send(Arc::new(ev));
    }

    /// The large event at `pos`, if the feed still keeps it.
    fn large(&self, pos: Pos) -> Option<Arc<StoredEvent>> {
        let large = self.large.lock().unwrap_or_else(|p| p.into_inner());
        large.0.iter().rev().find(|ev| ev.pos == pos).cloned()
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        let bytes = self.large.get_mut().map(|l| l.1).unwrap_or_else(|p| p.into_inner().1);
        self.large_total.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Reads an org's new events and broadcasts them in order, while anyone listens.
async fn pump(hub: EventHub, feed: Arc<Feed>) {
    let mut cursor = loop {
        match initial_cursor(hub.pool(), &feed.slug).await {
            Ok(pos) => break pos,
            Err(err) => {
                tracing::warn!(org = %feed.slug, error = %err, "event feed cannot start; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    *feed.lock_cursor() = Some(cursor);
    feed.ready.notify_waiters();
    let mut backoff = Duration::from_millis(2);
    loop {
        let pending = match forward(hub.pool(), &feed, &mut cursor).await {
            Ok(pending) => pending,
            Err(err) => {
                tracing::warn!(org = %feed.slug, error = %err, "event feed read failed; retrying");
                true
            }
        };
        {
            let mut feeds = hub.lock_feeds();
            if feed.tx.receiver_count() == 0 {
                feeds.remove(feed.slug.as_str());
                return;
            }
        }
        if pending {
            // Events are committed but an older transaction still runs: look again soon.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(250));
        } else {
            backoff = Duration::from_millis(2);
            let _ = tokio::time::timeout(Duration::from_secs(5), feed.wake.notified()).await;
        }
    }
}

async fn initial_cursor(pool: &PgPool, slug: &OrgSlug) -> Result<Pos, sqlx::Error> {
    let mut tx = begin_scoped(pool, slug).await?;
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT xid::text::bigint, id FROM task_events
         WHERE xid < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY xid DESC, id DESC LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row.map(|(xid, id)| Pos { xid, id }).unwrap_or_default())
}

/// Broadcasts every safe event after the cursor. Returns whether unsafe ones wait.
async fn forward(pool: &PgPool, feed: &Feed, cursor: &mut Pos) -> Result<bool, sqlx::Error> {
    loop {
        let page = read_page(pool, &feed.slug, *cursor, None).await?;
        for ev in page.events {
            *cursor = ev.pos;
            feed.publish(ev);
        }
        if page.waiting {
            return Ok(true);
        }
        if !page.full {
            return Ok(false);
        }
    }
}

/// One page of what can be delivered after a position.
struct Page {
    /// Safe to deliver, in order.
    events: Vec<StoredEvent>,
    /// More may follow at once.
    full: bool,
    /// Committed events wait behind an older transaction still running.
    waiting: bool,
}

/// The deliverable events after `after` (optionally of one task), a page at a time:
/// what the pump broadcasts and what a follower that fell behind catches up with.
async fn read_page(pool: &PgPool, slug: &OrgSlug, after: Pos, task: Option<Uuid>) -> Result<Page, sqlx::Error> {
    let mut tx = begin_scoped(pool, slug).await?;
    let rows = load(&mut tx, after, task, PAGE).await?;
    tx.commit().await?;
    let full = rows.len() as i64 == PAGE;
    let mut events = Vec::with_capacity(rows.len());
    let mut waiting = false;
    for (ev, safe) in rows {
        if !safe {
            waiting = true;
            break;
        }
        events.push(ev);
    }
    Ok(Page { events, full: full && !waiting, waiting })
}

/// What a follower gets next.
pub enum Item {
    Stored(Arc<StoredEvent>),
    Live(Arc<LiveEvent>),
    /// The client's `Last-Event-ID` is not an event of this org: it must reload.
    Resync,
}

/// The feed closed (the server is stopping).
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("feed closed")]
    Closed,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// One subscriber's place in an org's events: from the database after a
/// `Last-Event-ID` or when it fell behind the live feed, then live. Every stored event
/// after its start comes exactly once, in delivery order; what to show is the caller's
/// business.
pub struct Follower {
    pool: PgPool,
    slug: OrgSlug,
    /// Catching up reads only this task's events (the caller still filters live ones).
    task: Option<Uuid>,
    rx: broadcast::Receiver<Arc<StoredEvent>>,
    live: broadcast::Receiver<Arc<LiveEvent>>,
    /// Where the events too large for the ring are kept.
    feed: Arc<Feed>,
    /// The last event passed on.
    last: Pos,
    resume: Option<i64>,
    catching_up: bool,
    pending: std::collections::VecDeque<Item>,
}

impl Follower {
    /// The next item. Cancel-safe: a call dropped before it returns loses nothing.
    pub async fn next(&mut self) -> Result<Item, FollowError> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Ok(item);
            }
            if let Some(id) = self.resume {
                let mut tx = begin_scoped(&self.pool, &self.slug).await?;
                let pos = position_of(&mut tx, id).await?;
                tx.commit().await?;
                self.resume = None;
                match pos {
                    Some(pos) => {
                        self.last = pos;
                        self.catching_up = true;
                    }
                    None => return Ok(Item::Resync),
                }
                continue;
            }
            if self.catching_up {
                let page = read_page(&self.pool, &self.slug, self.last, self.task).await?;
                self.catching_up = page.full;
                for ev in page.events {
                    self.last = ev.pos;
                    self.pending.push_back(Item::Stored(Arc::new(ev)));
                }
                continue;
            }
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    // A notice of an event too large for the ring: the feed keeps it,
                    // else (this follower fell far behind) the database has it. Another
                    // task's is skipped.
                    Ok(ev) if ev.pos > self.last && !ev.whole => {
                        if self.task.is_none_or(|t| t == ev.task_id) {
                            match self.feed.large(ev.pos) {
                                Some(whole) => {
                                    self.last = whole.pos;
                                    return Ok(Item::Stored(whole));
                                }
                                None => self.catching_up = true,
                            }
                        }
                    }
                    Ok(ev) if ev.pos > self.last => {
                        self.last = ev.pos;
                        return Ok(Item::Stored(ev));
                    }
                    Ok(_) => {}
                    // Too slow for the live feed: read what was missed from the database.
                    Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                    Err(broadcast::error::RecvError::Closed) => return Err(FollowError::Closed),
                },
                // Live output has no id: a client that reconnects gets the stored steps.
                live = self.live.recv() => match live {
                    Ok(ev) => return Ok(Item::Live(ev)),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return Err(FollowError::Closed),
                },
            }
        }
    }
}

/// Tells other replicas which orgs changed: changes are gathered for a few
/// milliseconds, then one NOTIFY per org goes out. Busy orgs cost a handful of
/// notifications a second, not one per write.
async fn notify_replicas(pool: PgPool, mut rx: mpsc::UnboundedReceiver<String>) {
    while let Some(first) = rx.recv().await {
        tokio::time::sleep(NOTIFY_WINDOW).await;
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            if !batch.contains(&more) {
                batch.push(more);
            }
        }
        for slug in batch {
            if let Err(err) = sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(&slug).execute(&pool).await {
                tracing::debug!(error = %err, "pg_notify failed");
            }
        }
    }
}

/// Wakes local feeds when another replica committed events.
async fn listen_replicas(hub: EventHub) {
    while !hub.pool().is_closed() {
        let mut listener = match PgListener::connect_with(hub.pool()).await {
            Ok(l) => l,
            Err(_) if hub.pool().is_closed() => return,
            Err(err) => {
                tracing::warn!(error = %err, "cannot LISTEN for other replicas; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        if listener.listen(CHANNEL).await.is_err() {
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        // Anything may have been missed while not listening.
        hub.wake_all();
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => hub.wake_local(n.payload()),
                Ok(None) => {
                    hub.wake_all();
                }
                Err(_) if hub.pool().is_closed() => return,
                Err(err) => {
                    tracing::warn!(error = %err, "LISTEN connection lost; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
