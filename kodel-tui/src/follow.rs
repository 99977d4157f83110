//! The one follower of the server's event streams (SSE): the TUI follows the org's and
//! the open task's with it, `kodel task logs -f` a task's. Its policies:
//!
//! - **Resume**: every connection after the first sends `Last-Event-ID`, the id of the
//!   last stored event seen (or the one it was started after), and the server replays
//!   what came since: nothing missed, nothing twice.
//! - **Resync**: when the server answers `event: resync` (it does not know that id), or a
//!   connection is made again with no id to resume from, the caller hears
//!   [`Update::Resync`] and reads again what the stream would have shown.
//! - **Backoff**: a failed or lost connection is made again after 250 ms, doubled per
//!   failure up to 5 s; the server's `retry:` time (within 250 ms..60 s) replaces the
//!   first step, and a 429 or 503's `Retry-After` is waited at least. Only a connection
//!   that held for 5 s starts the count again: a server that answers and hangs up at
//!   once is not hammered.
//! - **Silence**: the server sends a heartbeat comment every 15 s. Nothing at all (not a
//!   heartbeat either) for 45 s and the connection is taken for dead and made again.
//! - **Tokens**: each connection goes through [`Client::authed_with`], which refreshes
//!   an expired access token (a stream opened with one ends when it expires).
//! - **Refusal**: a 4xx other than 408 and 429, after that refresh, is the error
//!   [`Follower::next`] returns: as things are, the stream cannot be followed. Called
//!   again, it tries again after the longest wait.
//!
//! Stored events carry `id:`; live output (the model's words, a command's output) has
//! none. The parser keeps the last id for the events after it, as the SSE spec says, so
//! an event is a stored one when its id differs from the one before it.

use std::fmt;
use std::pin::Pin;
use std::time::{Duration, Instant};

use eventsource_stream::{Event as SseEvent, EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use kodel_core::api::Event;
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::client::{Client, decode};
use crate::exit::{self, CliError};

/// How the follower waits and gives up; [`Policy::default`] is what the module says.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The wait after the first failure; doubled per failure after it.
    pub first_delay: Duration,
    /// The longest wait between two tries.
    pub max_delay: Duration,
    /// A connection that held this long starts the count of failures again.
    pub steady: Duration,
    /// Nothing from the server for this long: the connection is made again.
    pub silence: Duration,
    /// How long the server may take to answer a connection.
    pub answer: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
            steady: Duration::from_secs(5),
            silence: Duration::from_secs(45),
            answer: Duration::from_secs(30),
        }
    }
}

/// The server's `retry:` time is taken within these bounds.
const RETRY_FIELD: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(60));
/// A 429's or 503's `Retry-After` is waited up to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// The most one event may hold: a stream that never ends its event is cut there.
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// What the stream brought.
#[derive(Debug)]
pub enum Update {
    /// Connected (the first time, or again after [`Update::Lost`]).
    Connected,
    /// A stored event (it has an id).
    Event(Event),
    /// Live output: the event's data as sent (JSON).
    Live(String),
    /// The stream's place is lost: what it would have shown meanwhile must be read again.
    Resync,
    /// The connection failed or ended; it is made again after `retry_in`.
    Lost { attempt: u32, error: String, retry_in: Duration },
}

type Events = Pin<Box<dyn Stream<Item = Result<SseEvent, EventStreamError<Cut>>> + Send>>;

pub struct Follower {
    client: Client,
    path: String,
    policy: Policy,
    /// The last stored event seen: the next connection resumes after it.
    last_id: Option<i64>,
    events: Option<Events>,
    /// The id the parser gave the previous event of this connection.
    prev_id: String,
    connected_at: Option<Instant>,
    connected_before: bool,
    resync_due: bool,
    /// Failures since the last connection that held.
    attempt: u32,
    /// The server's `retry:` time.
    retry: Option<Duration>,
    /// To wait before the next connection.
    wait: Duration,
}

/// Why a connection could not be made.
enum Failure {
    Retry { error: String, after: Option<Duration> },
    Refused(CliError),
}

impl Follower {
    /// Follows the stream at `path`, after the stored event `last_id` if given.
    pub fn new(client: Client, path: impl Into<String>, last_id: Option<i64>) -> Follower {
        Follower::with_policy(client, path, last_id, Policy::default())
    }

    pub fn with_policy(client: Client, path: impl Into<String>, last_id: Option<i64>, policy: Policy) -> Follower {
        Follower {
            client,
            path: path.into(),
            policy,
            last_id,
            events: None,
            prev_id: String::new(),
            connected_at: None,
            connected_before: false,
            resync_due: false,
            attempt: 0,
            retry: None,
            wait: Duration::ZERO,
        }
    }

    /// The next connection resumes after the stored event `id` (read by other means,
    /// such as the history after a [`Update::Resync`]).
    pub fn resume_after(&mut self, id: i64) {
        self.last_id = Some(id);
    }

    /// Failures since the last connection that held.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The next thing the stream brought; connects (again) as needed. An error is a
    /// refusal (see the module).
    pub async fn next(&mut self) -> Result<Update, CliError> {
        loop {
            if std::mem::take(&mut self.resync_due) {
                return Ok(Update::Resync);
            }
            let Some(events) = self.events.as_mut() else {
                let wait = std::mem::take(&mut self.wait);
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                return match connect(&self.client, &self.path, self.last_id, &self.policy).await {
                    Ok(resp) => {
                        self.resync_due = self.connected_before && self.last_id.is_none();
                        self.connected_before = true;
                        self.connected_at = Some(Instant::now());
                        self.prev_id.clear();
                        self.events = Some(Box::pin(watched(resp.bytes_stream(), self.policy.silence).eventsource()));
                        Ok(Update::Connected)
                    }
                    Err(Failure::Retry { error, after }) => Ok(self.lost(error, after)),
                    Err(Failure::Refused(e)) => {
                        self.attempt += 1;
                        self.wait = self.policy.max_delay;
                        Err(e)
                    }
                };
            };
            match events.next().await {
                Some(Ok(ev)) => {
                    if let Some(update) = self.take(ev) {
                        return Ok(update);
                    }
                }
                Some(Err(e)) => return Ok(self.lost(describe(e), None)),
                None => return Ok(self.lost("the event stream ended".to_owned(), None)),
            }
        }
    }

    /// The wait after the `attempt`th failure in a row (from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let first = self.retry.unwrap_or(self.policy.first_delay);
        let doubled = first.saturating_mul(1 << attempt.saturating_sub(1).min(16));
        doubled.min(self.policy.max_delay.max(first))
    }

    /// The connection is gone: counts the failure and sets the wait before the next.
    fn lost(&mut self, error: String, after: Option<Duration>) -> Update {
        self.events = None;
        if self.connected_at.take().is_some_and(|at| at.elapsed() >= self.policy.steady) {
            self.attempt = 0;
        }
        self.attempt += 1;
        self.wait = self.delay(self.attempt).max(after.unwrap_or_default());
        Update::Lost { attempt: self.attempt, error, retry_in: self.wait }
    }

    fn take(&mut self, ev: SseEvent) -> Option<Update> {
        if let Some(retry) = ev.retry {
            self.retry = Some(retry.clamp(RETRY_FIELD.0, RETRY_FIELD.1));
        }
        let own_id = !ev.id.is_empty() && ev.id != self.prev_id;
        self.prev_id = ev.id;
        if ev.event == "resync" {
            // The id sent is unknown to the server: it follows live from now on.
            self.last_id = None;
            return Some(Update::Resync);
        }
        match own_id.then(|| self.prev_id.trim().parse::<i64>().ok()).flatten() {
            Some(id) => {
                self.last_id = Some(id);
                serde_json::from_str(&ev.data).ok().map(Update::Event)
            }
            None => Some(Update::Live(ev.data)),
        }
    }
}

/// Opens the stream at `path` after the stored event `last_id`.
async fn connect(client: &Client, path: &str, last_id: Option<i64>, policy: &Policy) -> Result<reqwest::Response, Failure> {
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    if let Some(id) = last_id {
        headers.insert("last-event-id", HeaderValue::from(id));
    }
    let resp = match tokio::time::timeout(policy.answer, client.authed_with(Method::GET, path, None, headers)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => return Err(Failure::Retry { error: e.message, after: None }),
        Err(_) => return Err(Failure::Retry { error: format!("the server did not answer within {} s", policy.answer.as_secs()), after: None }),
    };
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let after = resp.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok()).map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
    let err = match decode::<Value>(resp).await {
        Err(e) => e,
        Ok(_) => CliError::new(exit::FAILURE, format!("the server answered {status}")),
    };
    if status.is_client_error() && status != StatusCode::REQUEST_TIMEOUT && status != StatusCode::TOO_MANY_REQUESTS {
        Err(Failure::Refused(err))
    } else {
        Err(Failure::Retry { error: err.message, after })
    }
}

/// Why a connection's bytes stopped.
#[derive(Debug)]
enum Cut {
    Broken,
    Silent(Duration),
    TooLong,
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cut::Broken => f.write_str("the connection to the server broke off"),
            Cut::Silent(d) => write!(f, "nothing from the server for {} s", d.as_secs_f32()),
            Cut::TooLong => write!(f, "an event of more than {} MiB", MAX_EVENT_BYTES >> 20),
        }
    }
}

fn describe(e: EventStreamError<Cut>) -> String {
    match e {
        EventStreamError::Transport(cut) => cut.to_string(),
        EventStreamError::Utf8(_) => "the event stream is not UTF-8".to_owned(),
        EventStreamError::Parser(_) => "the event stream could not be read".to_owned(),
    }
}

/// The body's bytes, cut off after `silence` without any (heartbeats count) or when an
/// event grows past [`MAX_EVENT_BYTES`].
fn watched<S, B, E>(body: S, silence: Duration) -> impl Stream<Item = Result<B, Cut>> + Send
where
    S: Stream<Item = Result<B, E>> + Send + 'static,
    B: AsRef<[u8]> + Send,
{
    futures::stream::unfold(Some((Box::pin(body), Unfinished::default())), move |state| async move {
        let (mut body, mut unfinished) = state?;
        match tokio::time::timeout(silence, body.next()).await {
            Ok(Some(Ok(chunk))) if unfinished.add(chunk.as_ref()) => Some((Ok(chunk), Some((body, unfinished)))),
            Ok(Some(Ok(_))) => Some((Err(Cut::TooLong), None)),
            Ok(Some(Err(_))) => Some((Err(Cut::Broken), None)),
            Ok(None) => None,
            Err(_) => Some((Err(Cut::Silent(silence)), None)),
        }
    })
}

/// Bytes of the event still open (since the last blank line).
#[derive(Debug)]
struct Unfinished {
    bytes: usize,
    line_start: bool,
}

impl Default for Unfinished {
    fn default() -> Self {
        Unfinished { bytes: 0, line_start: true }
    }
}

impl Unfinished {
    /// False once the open event is too long.
    fn add(&mut self, chunk: &[u8]) -> bool {
        for b in chunk {
            self.bytes += 1;
            match b {
                b'\n' if self.line_start => self.bytes = 0,
                b'\n' => self.line_start = true,
                b'\r' => {}
                _ => self.line_start = false,
            }
        }
        self.bytes <= MAX_EVENT_BYTES
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::config::Credentials;

    /// A request the fake server read: its first line and headers (names lowercase).
    #[derive(Debug, Clone)]
    struct Request {
        line: String,
        headers: Vec<(String, String)>,
    }

    impl Request {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
        }
    }

    /// What the fake server answers.
    enum Reply {
        Status(u16, &'static str),
        /// 429 with `Retry-After` (seconds).
        Busy(u64),
        /// An event stream: these parts, then the connection is closed (or kept open
        /// and silent).
        Stream(Vec<Part>, bool),
    }

    enum Part {
        Text(&'static str),
        Bytes(Vec<u8>),
        Pause(u64),
    }

    /// A server on a free port answering every connection (one request each) with
    /// what `answer` gives; the requests it read, in order.
    async fn fake<F, Fut>(answer: F) -> (String, Arc<Mutex<Vec<Request>>>)
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (answer, log) = (Arc::new(answer), seen.clone());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (answer, log) = (answer.clone(), log.clone());
                tokio::spawn(async move {
                    let (mut sock, req) = read_request(sock).await;
                    log.lock().unwrap().push(req.clone());
                    match answer(req).await {
                        Reply::Status(code, body) => {
                            let head = format!("HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                            let _ = sock.write_all(format!("{head}{body}").as_bytes()).await;
                        }
                        Reply::Busy(secs) => {
                            let body = r#"{"error":{"code":"too_many_requests","message":"you have 8 event streams open"}}"#;
                            let head = format!("HTTP/1.1 429 X\r\nretry-after: {secs}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                            let _ = sock.write_all(format!("{head}{body}").as_bytes()).await;
                        }
                        Reply::Stream(parts, hang) => {
                            let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n").await;
                            for part in parts {
                                match part {
                                    Part::Text(t) => drop(sock.write_all(t.as_bytes()).await),
                                    Part::Bytes(b) => drop(sock.write_all(&b).await),
                                    Part::Pause(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                                }
                                let _ = sock.flush().await;
                            }
                            if hang {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                            }
                        }
                    }
                });
            }
        });
        (base, seen)
    }

    async fn read_request(mut sock: TcpStream) -> (TcpStream, Request) {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") && sock.read(&mut byte).await.unwrap_or(0) == 1 {
            buf.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let mut lines = text.lines();
        let line = lines.next().unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> =
            lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_owned())).collect();
        let length = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0u8; length];
        let _ = sock.read_exact(&mut body).await;
        (sock, Request { line, headers })
    }

    fn client(base: &str, access: &str) -> Client {
        let creds = Credentials { access_token: Some(access.into()), refresh_token: Some("r1".into()), ..Credentials::default() };
        Client::new(base, Some(creds), true).unwrap()
    }

    fn quick() -> Policy {
        Policy { first_delay: Duration::from_millis(10), max_delay: Duration::from_millis(40), steady: Duration::from_secs(5), silence: Duration::from_secs(5), answer: Duration::from_secs(5) }
    }

    fn stored(id: i64) -> String {
        let ev = serde_json::json!({"id": id, "type": "task.created", "task": "KOD-1", "seq": id, "actor": null, "payload": {}, "created_at": "2026-11-28T10:00:00Z"});
        format!("id: {id}\nevent: task.created\ndata: {ev}\n\n")
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    async fn next(f: &mut Follower) -> Update {
        tokio::time::timeout(Duration::from_secs(10), f.next()).await.expect("the follower answers").expect("not refused")
    }

    #[tokio::test]
    async fn backoff_grows_and_caps_and_the_servers_retry_time_replaces_its_first_step() {
        // Nothing listens on this port: every connection fails at once.
        let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let mut f = Follower::with_policy(client(&format!("http://127.0.0.1:{port}"), "a"), "/events", None, quick());
        let mut waits = Vec::new();
        for _ in 0..5 {
            match next(&mut f).await {
                Update::Lost { attempt, retry_in, error } => {
                    assert!(error.contains("cannot connect"), "{error}");
                    waits.push((attempt, retry_in.as_millis()));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(waits, [(1, 10), (2, 20), (3, 40), (4, 40), (5, 40)]);
        let f = Follower::new(client("http://127.0.0.1:1", "a"), "/events", None);
        let secs = |f: &Follower| (1..=7).map(|n| f.delay(n).as_secs_f32()).collect::<Vec<_>>();
        assert_eq!(secs(&f), [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]);
        let mut f = f;
        f.retry = Some(Duration::from_secs(3));
        assert_eq!(secs(&f), [3.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]);
        f.retry = Some(Duration::from_secs(8));
        assert_eq!(secs(&f), [8.0; 7], "a longer retry: time is the cap too");
    }

    #[tokio::test]
    async fn the_servers_retry_field_sets_the_first_step() {
        let (base, _) = fake(|_| async { Reply::Stream(vec![Part::Text("retry: 1000\nevent: job.output\ndata: {}\n\n")], false) }).await;
        let mut f = Follower::with_policy(client(&base, "a"), "/events", None, quick());
        assert!(matches!(next(&mut f).await, Update::Connected));
        assert!(matches!(next(&mut f).await, Update::Live(_)));
        let Update::Lost { attempt, retry_in, .. } = next(&mut f).await else { panic!() };
        assert_eq!((attempt, retry_in), (1, Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn only_a_connection_that_held_starts_the_count_again() {
        let (base, _) = fake(|_| async { Reply::Stream(vec![Part::Text(leak(stored(1)))], false) }).await;
        let policy = Policy { steady: Duration::from_millis(500), ..quick() };
        let mut f = Follower::with_policy(client(&base, "a"), "/events", None, policy);
        for attempt in 1..=3 {
            assert!(matches!(next(&mut f).await, Update::Connected));
            assert!(matches!(next(&mut f).await, Update::Event(_)));
            assert!(matches!(next(&mut f).await, Update::Lost { attempt: a, .. } if a == attempt), "a server that hangs up at once: failure {attempt}");
        }
        assert!(matches!(next(&mut f).await, Update::Connected));
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(matches!(next(&mut f).await, Update::Event(_)));
        assert!(matches!(next(&mut f).await, Update::Lost { attempt: 1, .. }));
    }

    #[tokio::test]
    async fn silence_reconnects_but_heartbeats_keep_the_stream() {
        let calls = Arc::new(Mutex::new(0));
        let (base, seen) = fake(move |_| {
            let n = {
                let mut c = calls.lock().unwrap();
                *c += 1;
                *c
            };
            async move {
                if n == 1 {
                    // Heartbeats for longer than the silence allowed, an event, then nothing.
                    let mut parts: Vec<Part> = (0..6).flat_map(|_| [Part::Pause(100), Part::Text(": ping\n\n")]).collect();
                    parts.push(Part::Text(leak(stored(7))));
                    Reply::Stream(parts, true)
                } else {
                    Reply::Stream(vec![], true)
                }
            }
        })
        .await;
        let policy = Policy { silence: Duration::from_millis(300), ..quick() };
        let mut f = Follower::with_policy(client(&base, "a"), "/events", None, policy);
        assert!(matches!(next(&mut f).await, Update::Connected));
        let started = Instant::now();
        assert!(matches!(next(&mut f).await, Update::Event(ev) if ev.id == 7));
        assert!(started.elapsed() >= Duration::from_millis(500), "the heartbeats kept it");
        let Update::Lost { error, attempt: 1, .. } = next(&mut f).await else { panic!() };
        assert_eq!(error, "nothing from the server for 0.3 s");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(next(&mut f).await, Update::Connected));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].header("last-event-id"), Some("7"));
    }

    #[tokio::test]
    async fn resuming_sends_the_id_of_the_last_stored_event_seen() {
        let calls = Arc::new(Mutex::new(0));
        let (base, seen) = fake(move |_| {
            *calls.lock().unwrap() += 1;
            let first = *calls.lock().unwrap() == 1;
            async move {
                if !first {
                    return Reply::Stream(vec![], true);
                }
                // Stored 41, live output (the parser gives it id 41 too), stored 42 with a
                // character split between two packets, live output again; then the end.
                let live = "event: job.output\ndata: {\"payload\":{\"text\":\"caf\u{e9}\"}}\n\n";
                let split = stored(42).replace("KOD-1", "caf\u{e9} \u{1f680}").into_bytes();
                let cut = split.iter().position(|b| *b == 0xC3).unwrap() + 1;
                Reply::Stream(
                    vec![
                        Part::Text(leak(stored(41))),
                        Part::Text(live),
                        Part::Bytes(split[..cut].to_vec()),
                        Part::Pause(50),
                        Part::Bytes(split[cut..].to_vec()),
                        Part::Text(live),
                    ],
                    false,
                )
            }
        })
        .await;
        let mut f = Follower::with_policy(client(&base, "a"), "/api/v1/orgs/acme/events", Some(40), quick());
        assert!(matches!(next(&mut f).await, Update::Connected));
        assert!(matches!(next(&mut f).await, Update::Event(ev) if ev.id == 41));
        assert!(matches!(next(&mut f).await, Update::Live(data) if data.contains("caf\u{e9}")));
        assert!(matches!(next(&mut f).await, Update::Event(ev) if ev.id == 42 && ev.task == "caf\u{e9} \u{1f680}"));
        assert!(matches!(next(&mut f).await, Update::Live(_)));
        assert!(matches!(next(&mut f).await, Update::Lost { ref error, .. } if error == "the event stream ended"));
        assert!(matches!(next(&mut f).await, Update::Connected), "no resync: there is an id to resume from");
        let seen = seen.lock().unwrap();
        assert!(seen[0].line.starts_with("GET /api/v1/orgs/acme/events "), "{}", seen[0].line);
        assert_eq!(seen[0].header("last-event-id"), Some("40"));
        assert_eq!(seen[0].header("authorization"), Some("Bearer a"));
        assert_eq!(seen[1].header("last-event-id"), Some("42"));
    }

    #[tokio::test]
    async fn a_lost_place_means_a_resync() {
        let calls = Arc::new(Mutex::new(0));
        let (base, seen) = fake(move |_| {
            *calls.lock().unwrap() += 1;
            let n = *calls.lock().unwrap();
            async move {
                match n {
                    1 => Reply::Stream(vec![Part::Text("event: resync\ndata: {\"reason\":\"unknown Last-Event-ID\"}\n\n")], false),
                    _ => Reply::Stream(vec![], n > 2),
                }
            }
        })
        .await;
        let mut f = Follower::with_policy(client(&base, "a"), "/events", Some(999), quick());
        // The server does not know 999: it says so.
        assert!(matches!(next(&mut f).await, Update::Connected));
        assert!(matches!(next(&mut f).await, Update::Resync));
        assert!(matches!(next(&mut f).await, Update::Lost { .. }));
        // Back with nothing to resume from: whatever came meanwhile is unknown.
        assert!(matches!(next(&mut f).await, Update::Connected));
        assert!(matches!(next(&mut f).await, Update::Resync));
        assert!(matches!(next(&mut f).await, Update::Lost { .. }));
        assert!(matches!(next(&mut f).await, Update::Connected));
        assert!(matches!(next(&mut f).await, Update::Resync));
        {
            let seen = seen.lock().unwrap();
            assert_eq!(seen[0].header("last-event-id"), Some("999"));
            assert_eq!(seen[1].header("last-event-id"), None, "an id the server does not know is not sent again");
        }
        // A follower started with nothing to resume from: its first connection is no resync.
        let mut f = Follower::with_policy(client(&base, "a"), "/events", None, quick());
        assert!(matches!(next(&mut f).await, Update::Connected));
        assert!(tokio::time::timeout(Duration::from_millis(200), f.next()).await.is_err(), "nothing until the server sends");
    }

    /// Both TUI streams were opened with the same access token, so they end together when
    /// it expires and come back together with it refused. A refresh token works once: a
    /// second refresh with it would end the session.
    #[tokio::test]
    async fn streams_refused_together_refresh_the_token_once() {
        let refreshes = Arc::new(Mutex::new(0));
        let old = Arc::new(tokio::sync::Barrier::new(2));
        let counted = refreshes.clone();
        let (base, seen) = fake(move |req| {
            let (refreshes, old) = (counted.clone(), old.clone());
            async move {
                if req.line.starts_with("POST /api/v1/auth/refresh") {
                    *refreshes.lock().unwrap() += 1;
                    return Reply::Status(200, r#"{"access_token":"new","refresh_token":"r2","token_type":"Bearer","expires_in":900}"#);
                }
                match req.header("authorization") {
                    Some("Bearer new") => Reply::Stream(vec![], true),
                    _ => {
                        // Both are refused, neither before the other asked.
                        old.wait().await;
                        Reply::Status(401, r#"{"error":{"code":"unauthorized","message":"the access token expired"}}"#)
                    }
                }
            }
        })
        .await;
        let c = client(&base, "old");
        let mut a = Follower::with_policy(c.clone(), "/api/v1/orgs/acme/events", Some(1), quick());
        let mut b = Follower::with_policy(c.clone(), "/api/v1/orgs/acme/tasks/KOD-1/events", Some(1), quick());
        let (x, y) = tokio::join!(next(&mut a), next(&mut b));
        assert!(matches!((x, y), (Update::Connected, Update::Connected)));
        assert_eq!(*refreshes.lock().unwrap(), 1);
        assert_eq!(c.credentials().and_then(|c| c.refresh_token).as_deref(), Some("r2"));
        let again = seen.lock().unwrap().iter().filter(|r| r.header("authorization") == Some("Bearer new")).map(|r| r.header("last-event-id").map(str::to_owned)).collect::<Vec<_>>();
        assert_eq!(again, [Some("1".to_owned()), Some("1".to_owned())], "the place is kept across the refresh");
    }

    #[tokio::test]
    async fn a_refusal_is_an_error_and_a_busy_server_is_waited_for() {
        let (base, _) = fake(|req| async move {
            if req.line.contains("/gone/") {
                Reply::Status(404, r#"{"error":{"code":"task_not_found","message":"KOD-9 not found"}}"#)
            } else {
                Reply::Status(429, r#"{"error":{"code":"too_many_requests","message":"you have 8 event streams open","details":{"retry_after_secs":3}}}"#)
            }
        })
        .await;
        let mut f = Follower::with_policy(client(&base, "a"), "/gone/events", None, quick());
        let err = tokio::time::timeout(Duration::from_secs(5), f.next()).await.unwrap().unwrap_err();
        assert_eq!(err.code, exit::NOT_FOUND);
        assert!(err.message.contains("KOD-9 not found"), "{}", err.message);
        assert_eq!((f.attempt(), f.wait), (1, quick().max_delay), "called again, it tries again after the longest wait");
        // 429: tried again, not sooner than its Retry-After says, else after the usual wait.
        let (base, _) = fake(|req| async move { if req.line.contains("/busy/") { Reply::Busy(1) } else { Reply::Status(503, "") } }).await;
        let mut f = Follower::with_policy(client(&base, "a"), "/busy/events", None, quick());
        let Update::Lost { error, retry_in, .. } = next(&mut f).await else { panic!() };
        assert!(error.contains("8 event streams"), "{error}");
        assert_eq!(retry_in, Duration::from_secs(1));
        let mut f = Follower::with_policy(client(&base, "a"), "/down/events", None, quick());
        let Update::Lost { error, retry_in, .. } = next(&mut f).await else { panic!() };
        assert_eq!((error.as_str(), retry_in), ("server answered 503 Service Unavailable", quick().first_delay));
    }

    #[test]
    fn an_event_that_never_ends_is_cut() {
        let mut u = Unfinished::default();
        assert!(u.add(b": ping\n\nevent: x\ndata: 1\n\n"));
        assert_eq!(u.bytes, 0, "a blank line ends the event");
        assert!(u.add(b"event: x\r\ndata: 1\r\n\r\n"));
        assert_eq!(u.bytes, 0, "CRLF too");
        assert!(u.add(b"data: 1\n"));
        assert!(u.add(&vec![b'x'; MAX_EVENT_BYTES - 10]));
        assert!(!u.add(b"\nxxxxxxxxxx"), "a single newline does not end it");
    }
}
