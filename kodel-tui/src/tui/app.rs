//! The TUI's state and what keys and server messages do to it. No I/O here: a key or a
//! message changes the state and may ask for [`Effect`]s, which `net.rs` (and the event
//! loop, for the editor) carry out and answer with [`Msg`]s. That keeps every view's
//! key handling testable without a terminal or a server.
//!
//! Here: the [`App`], the keys every view shares, the messages and what they change.
//! Each view's own keys (one `match` a view) and drawing are in its module: `board.rs`,
//! `detail.rs` (a task), `agents.rs`, `jobs.rs`; the form in `form.rs`; help, pickers,
//! prompts and the artifact view in `overlay.rs`.

use std::collections::HashMap;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind};
use kodel_core::api::{Comment, Event, Org, Project, Task};
use kodel_core::events::{JobCreated, JobFailed, JobOutput, JobStarted, TaskEvent};
use kodel_core::infra::Agent;
use kodel_core::jobs::{Artifact, ArtifactState, Job, JobState};
use serde_json::Value;
use uuid::Uuid;

// The types of App's fields, for whoever holds an App.
pub use super::board::Board;
pub use super::detail::Detail;
use super::form::{FIELDS, Field};
pub use super::overlay::{Overlay, Pick, PromptFor};
use super::stream::Stream;
use super::{agents, board, detail, form, jobs, overlay};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Board,
    Task,
    Agents,
    Jobs,
    Usage,
}

/// The connection to the server's event stream, as the status line shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conn {
    Connecting,
    Live,
    Retrying { attempt: u32, error: String },
}

/// What the app asks the outside world to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    LoadOrgs,
    LoadProjects,
    /// The project, its tasks and the org's running jobs; then the board.
    OpenProject(String),
    /// The org's event stream (restarted when the org changes).
    FollowOrg,
    RefreshTask(String),
    /// Task, comments, jobs, artifacts, the history, then the task's stream.
    OpenTask(String),
    /// Task, comments, jobs and artifacts again (not the history).
    ReloadDetail(String),
    CloseTask,
    Move { key: String, to: String },
    Create { project: String, body: Value },
    Update { key: String, body: Value },
    Comment { key: String, body: String },
    Decide { id: Uuid, approve: bool, comment: Option<String> },
    LoadAgents,
    LoadJobs,
    /// The org's usage of the last 30 days, by day and by model.
    LoadUsage,
    /// The org's job templates, for the picker (`s` in the task view).
    LoadTemplates,
    /// A job on a task from a template, started by hand (or again, after a failure).
    StartJob { key: String, template: String },
    /// Suspend the TUI and edit this text in $EDITOR.
    Edit(String),
    SaveSettings,
}

/// What comes back.
#[derive(Debug)]
pub enum Msg {
    Orgs(Vec<Org>),
    /// The projects of `org`.
    Projects { org: String, projects: Vec<Project> },
    /// A project of `org`, its tasks and the org's running jobs.
    Board { org: String, project: Project, tasks: Vec<Task>, running: Vec<Job> },
    /// The task's stream lost its place: read its history again.
    TaskResync(String),
    Task(Task),
    Detail { key: String, task: Task, comments: Vec<Comment>, jobs: Vec<Job>, artifacts: Vec<Artifact> },
    History { key: String, events: Vec<Event> },
    TaskEvent { key: String, event: Event },
    Live { key: String, output: JobOutput },
    OrgEvent(Event),
    /// The org stream lost its place (the server said resync): reload the board.
    Resync,
    Agents(Vec<Agent>),
    Jobs(Vec<Job>),
    Usage { by_day: Box<kodel_core::usage::UsageReport>, by_model: Box<kodel_core::usage::UsageReport> },
    /// Job templates: name and kind.
    Templates(Vec<(String, String)>),
    Conn(Conn),
    Done(String),
    Failed(String),
    /// A request finished that changed a task (the form closes).
    Saved(Task),
    Edited(String),
    /// The server's answer to a move this client sent.
    Moved(Task),
    /// A move was refused: where the server has the task (if it could be read).
    MoveUndone { key: String, task: Option<Task> },
}

/// Moves sent for one task and not answered yet.
#[derive(Debug, Clone)]
pub(super) struct Moving {
    /// The task's version when the first of them was shown: a copy of the task no newer
    /// than this was read before the moves and must not undo them on screen.
    pub(super) base: i32,
    /// Where the last of them puts it.
    pub(super) to: String,
    pub(super) count: usize,
}

pub struct App {
    /// Who is logged in (their email; none with an API token).
    pub user: Option<String>,
    pub org: String,
    pub project: Option<Project>,
    pub projects: Vec<Project>,
    pub orgs: Vec<Org>,
    pub tasks: Vec<Task>,
    /// Tasks with an AI job running: key -> the job's kind.
    pub running: HashMap<String, String>,
    pub view: View,
    pub board: Board,
    pub detail: Option<Detail>,
    pub agents: Vec<Agent>,
    pub agents_sel: usize,
    pub jobs: Vec<Job>,
    pub jobs_sel: usize,
    pub usage: super::usage::Usage,
    pub overlay: Overlay,
    pub conn: Conn,
    /// A message for the footer, and whether it is an error.
    pub status: Option<(String, bool)>,
    pub quit: bool,
    pub loading: bool,
    /// The project asked for last: a board for another one (a late reply) is dropped.
    pub wanted: Option<String>,
    /// Save the settings when the next board arrives (after a switch).
    pub(super) save_on_board: bool,
    /// Moves in flight, by task key (their status is shown before the server answers).
    pub(super) moving: HashMap<String, Moving>,
}

impl App {
    pub fn new(org: String) -> App {
        App {
            user: None,
            org,
            project: None,
            projects: Vec::new(),
            orgs: Vec::new(),
            tasks: Vec::new(),
            running: HashMap::new(),
            view: View::Board,
            board: Board::default(),
            detail: None,
            agents: Vec::new(),
            agents_sel: 0,
            jobs: Vec::new(),
            jobs_sel: 0,
            usage: Default::default(),
            overlay: Overlay::None,
            conn: Conn::Connecting,
            status: None,
            quit: false,
            loading: true,
            wanted: None,
            save_on_board: false,
            moving: HashMap::new(),
        }
    }

    /// What to read again on the periodic refresh: the agents or jobs on screen.
    pub fn refresh(&mut self) -> Vec<Effect> {
        match (self.view, &self.overlay) {
            (View::Agents, Overlay::None) => vec![Effect::LoadAgents],
            (View::Jobs, Overlay::None) => vec![Effect::LoadJobs],
            // Not usage: a report over a month of calls is not worth reading every 5 s.
            _ => vec![],
        }
    }

    /// Asks for a project's board (and remembers it is the one wanted).
    pub fn open_project(&mut self, key: String) -> Effect {
        self.wanted = Some(key.clone());
        Effect::OpenProject(key)
    }

    /// The task keys act on: the open one in the detail view, else the board's.
    pub(super) fn current_task(&self) -> Option<&Task> {
        match self.view {
            View::Task => self.detail.as_ref().and_then(|d| d.task.as_ref()),
            _ => self.selected(),
        }
    }

    pub(super) fn say(&mut self, text: impl Into<String>) {
        self.status = Some((text.into(), false));
    }

    pub(super) fn warn(&mut self, text: impl Into<String>) {
        self.status = Some((text.into(), true));
    }

    // ---- keys ---------------------------------------------------------------

    pub fn on_key(&mut self, k: KeyEvent) -> Vec<Effect> {
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            self.quit = true;
            return vec![];
        }
        if !matches!(self.overlay, Overlay::None) {
            return self.overlay_key(k);
        }
        // Keys every view shares. `q` quits from any view (Esc and b go back), as in
        // lazygit: a `q` that only went back left people's stacks running.
        match k.code {
            KeyCode::Char('q') => {
                self.quit = true;
                return self.leave_task(vec![]);
            }
            KeyCode::Char('?') => {
                self.overlay = Overlay::Help;
                return vec![];
            }
            KeyCode::Char('a') if self.view != View::Agents => {
                self.view = View::Agents;
                return self.leave_task(vec![Effect::LoadAgents]);
            }
            KeyCode::Char('J') if self.view != View::Jobs => {
                self.view = View::Jobs;
                return self.leave_task(vec![Effect::LoadJobs]);
            }
            KeyCode::Char('U') if self.view != View::Usage => {
                self.view = View::Usage;
                return self.leave_task(vec![Effect::LoadUsage]);
            }
            KeyCode::Char('b') if self.view != View::Board && self.view != View::Task => {
                self.view = View::Board;
                return vec![];
            }
            _ => {}
        }
        match self.view {
            View::Board => self.board_key(k),
            View::Task => self.task_key(k),
            View::Agents => self.agents_key(k),
            View::Jobs => self.jobs_key(k),
            View::Usage => self.usage_key(k),
        }
    }

    pub(super) fn leave_task(&mut self, mut effects: Vec<Effect>) -> Vec<Effect> {
        if self.detail.take().is_some() {
            effects.insert(0, Effect::CloseTask);
        }
        effects
    }

    /// Pasted text (bracketed paste) goes into the prompt or the form's field as text,
    /// never run as keys.
    pub fn on_paste(&mut self, text: &str) {
        match &mut self.overlay {
            Overlay::Prompt { input, .. } => input.push_str(&text.replace(['\r', '\n'], " ")),
            Overlay::Form(f) => {
                let multi_line = FIELDS[f.field] == Field::Description;
                let text = if multi_line { text.replace("\r\n", "\n") } else { text.replace(['\r', '\n'], " ") };
                if let Some(t) = f.text_mut() {
                    t.push_str(&text);
                }
            }
            _ => {}
        }
    }

    pub fn on_mouse(&mut self, m: MouseEvent) -> Vec<Effect> {
        let code = match m.kind {
            MouseEventKind::ScrollDown => KeyCode::Down,
            MouseEventKind::ScrollUp => KeyCode::Up,
            _ => return vec![],
        };
        if !matches!(self.overlay, Overlay::None | Overlay::Move { .. } | Overlay::Pick { .. } | Overlay::Artifact { .. }) {
            return vec![];
        }
        self.on_key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    // ---- messages -----------------------------------------------------------

    pub fn on_msg(&mut self, msg: Msg) -> Vec<Effect> {
        match msg {
            Msg::Orgs(orgs) => {
                if let Overlay::Pick { what: Pick::Org, items, .. } = &mut self.overlay {
                    *items = orgs.iter().map(|o| (o.slug.clone(), o.name.clone())).collect();
                }
                self.orgs = orgs;
            }
            Msg::Templates(templates) => {
                // The last failed job's template first in view: `s` then Enter retries.
                let failed = self.detail.as_ref().and_then(|d| d.jobs.iter().find(|j| j.status == kodel_core::jobs::JobState::Failed).map(|j| j.template.clone()));
                if let Overlay::Pick { what: Pick::Template, items, sel } = &mut self.overlay {
                    *sel = failed.and_then(|f| templates.iter().position(|(name, _)| *name == f)).unwrap_or(0);
                    *items = templates;
                }
            }
            Msg::Projects { org, projects } => {
                if org != self.org {
                    return vec![];
                }
                if let Overlay::Pick { what: Pick::Project, items, .. } = &mut self.overlay {
                    *items = projects.iter().map(|p| (p.key.clone(), p.name.clone())).collect();
                }
                let open_first = self.project.is_none() && self.wanted.is_none() && !projects.is_empty();
                self.projects = projects;
                if open_first {
                    let key = self.projects[0].key.clone();
                    return vec![self.open_project(key)];
                }
                if self.projects.is_empty() {
                    self.loading = false;
                }
            }
            Msg::Board { org, project, tasks, running } => {
                // A late answer for another org or project is not this board.
                if org != self.org || self.wanted.as_ref().is_some_and(|w| *w != project.key) {
                    return vec![];
                }
                self.running = running.into_iter().filter(|j| j.status == JobState::Running || j.status == JobState::Pending).map(|j| (j.task, j.kind.as_str().to_owned())).collect();
                self.project = Some(project);
                self.tasks = tasks;
                // Moves still in flight stay shown where they go.
                for t in &mut self.tasks {
                    if let Some(m) = self.moving.get(&t.key) {
                        t.status = m.to.clone();
                    }
                }
                self.loading = false;
                self.reanchor();
                if std::mem::take(&mut self.save_on_board) {
                    return vec![Effect::SaveSettings];
                }
            }
            Msg::Task(t) => self.upsert(t),
            Msg::Moved(t) => {
                if let Some(m) = self.moving.get_mut(&t.key) {
                    m.count -= 1;
                    if m.count == 0 {
                        self.moving.remove(&t.key);
                    }
                }
                self.upsert(t);
            }
            Msg::MoveUndone { key, task } => {
                self.moving.remove(&key);
                if let Some(t) = task {
                    self.tasks.retain(|x| x.key != t.key);
                    self.upsert(t);
                }
            }
            Msg::Saved(t) => {
                self.overlay = Overlay::None;
                self.say(format!("saved {}", t.key));
                self.upsert(t);
            }
            Msg::Detail { key, task, comments, jobs, artifacts } => {
                self.upsert(task.clone());
                // What the board shows, if newer (a move in flight, a later copy).
                let task = self.tasks.iter().find(|t| t.key == task.key).cloned().unwrap_or(task);
                if let Some(d) = self.detail.as_mut().filter(|d| d.key == key) {
                    d.task = Some(task);
                    d.comments = comments;
                    d.jobs = jobs;
                    d.artifacts = artifacts;
                    d.art = d.art.min(d.artifacts.len().saturating_sub(1));
                    // The newest pending artifact is the one to decide on.
                    if let Some(i) = d.artifacts.iter().position(|a| a.status == ArtifactState::Pending) {
                        d.art = i;
                    }
                }
            }
            Msg::History { key, events } => {
                if let Some(d) = self.detail.as_mut().filter(|d| d.key == key) {
                    let dropped = d.stream.dropped;
                    for e in &events {
                        d.stream.event(e);
                    }
                    d.loaded = true;
                    d.keep_selection(dropped);
                }
            }
            Msg::TaskEvent { key, event } => {
                if let Some(d) = self.detail.as_mut().filter(|d| d.key == key) {
                    let dropped = d.stream.dropped;
                    d.stream.event(&event);
                    d.keep_selection(dropped);
                }
            }
            Msg::Live { key, output } => {
                if let Some(d) = self.detail.as_mut().filter(|d| d.key == key) {
                    let dropped = d.stream.dropped;
                    d.stream.live(&output);
                    d.keep_selection(dropped);
                }
            }
            Msg::TaskResync(key) => {
                if let Some(d) = self.detail.as_mut().filter(|d| d.key == key) {
                    d.stream = Stream::default();
                    d.sel = None;
                    d.loaded = false;
                    return vec![Effect::OpenTask(key)];
                }
            }
            Msg::OrgEvent(ev) => return self.org_event(ev),
            Msg::Resync => {
                if let Some(key) = self.project.as_ref().map(|p| p.key.clone()) {
                    return vec![self.open_project(key)];
                }
            }
            Msg::Agents(a) => {
                self.agents = a;
                self.agents_sel = self.agents_sel.min(self.agents.len().saturating_sub(1));
            }
            Msg::Jobs(j) => {
                self.jobs = j;
                self.jobs_sel = self.jobs_sel.min(self.jobs.len().saturating_sub(1));
            }
            Msg::Usage { by_day, by_model } => {
                self.usage.by_day = Some(*by_day);
                self.usage.by_model = Some(*by_model);
            }
            Msg::Conn(c) => {
                let back = matches!(self.conn, Conn::Retrying { .. }) && c == Conn::Live;
                self.conn = c;
                if back {
                    self.say("reconnected");
                }
            }
            Msg::Done(text) => self.say(text),
            Msg::Failed(text) => {
                if let Overlay::Form(f) = &mut self.overlay {
                    f.error = Some(text);
                    f.saving = false;
                } else {
                    self.warn(text);
                }
                self.loading = false;
            }
            Msg::Edited(text) => {
                if let Overlay::Form(f) = &mut self.overlay {
                    f.description = text;
                }
            }
        }
        vec![]
    }

    /// Takes a copy of a task read from the server, unless a newer one is shown:
    /// answers can arrive out of order, and one read before a move must not undo it.
    fn upsert(&mut self, mut t: Task) {
        if self.project.as_ref().is_none_or(|p| p.key != t.project) {
            return;
        }
        if let Some(m) = self.moving.get(&t.key) {
            if t.version <= m.base {
                return;
            }
            t.status = m.to.clone();
        }
        match self.tasks.iter_mut().find(|x| x.key == t.key) {
            Some(x) if x.version > t.version => return,
            Some(x) => *x = t,
            None => self.tasks.push(t),
        }
        if self.view == View::Board {
            self.reanchor();
        }
    }

    fn org_event(&mut self, ev: Event) -> Vec<Effect> {
        let mut effects = Vec::new();
        let ours = self.project.as_ref().is_some_and(|p| ev.task.strip_prefix(&p.key).is_some_and(|rest| rest.starts_with('-')));
        let typed = ev.typed();
        match &typed {
            Some(TaskEvent::JobCreated(JobCreated { kind, .. }) | TaskEvent::JobStarted(JobStarted { kind, .. }) | TaskEvent::JobRequeued(JobFailed { kind, .. })) => {
                self.running.insert(ev.task.clone(), kind.to_string());
            }
            Some(TaskEvent::JobFailed(JobFailed { kind, error, .. })) => {
                self.running.remove(&ev.task);
                // Said where it is seen from the board: the error says what to do (a
                // model nobody runs, a missing test command).
                if ours {
                    self.warn(format!("{}: {kind} job failed: {}", ev.task, crate::commands::logs::whole(error)));
                }
            }
            Some(TaskEvent::JobSucceeded(_) | TaskEvent::JobCancelled(_)) => {
                self.running.remove(&ev.task);
            }
            _ => {}
        }
        // What changes a task as the board shows it, what an open task's view shows
        // (its fields, comments, artifacts, jobs; not each step or model call), and what
        // the jobs and agents tables list.
        let (task_changed, job_changed) = match &typed {
            Some(
                TaskEvent::TaskCreated(_)
                | TaskEvent::TaskUpdated(_)
                | TaskEvent::TaskArchived(_)
                | TaskEvent::TaskUnarchived(_)
                | TaskEvent::TaskMoved(_)
                | TaskEvent::CommentAdded(_)
                | TaskEvent::ArtifactApproved(_)
                | TaskEvent::ArtifactRejected(_),
            ) => (true, false),
            Some(
                TaskEvent::JobCreated(_)
                | TaskEvent::JobStarted(_)
                | TaskEvent::JobSucceeded(_)
                | TaskEvent::JobRequeued(_)
                | TaskEvent::JobFailed(_)
                | TaskEvent::JobCancelled(_),
            ) => (false, true),
            _ => (false, false),
        };
        if ours && task_changed {
            effects.push(Effect::RefreshTask(ev.task.clone()));
        }
        let open = self.detail.as_ref().is_some_and(|d| d.key == ev.task);
        if open && (task_changed || job_changed) {
            effects.push(Effect::ReloadDetail(ev.task.clone()));
        }
        if job_changed {
            match self.view {
                View::Jobs => effects.push(Effect::LoadJobs),
                View::Agents => effects.push(Effect::LoadAgents),
                _ => {}
            }
        }
        effects
    }
}

/// Moves a table's selection for the keys every table shares (j/k and the arrows,
/// g/G and Home/End). False for any other key.
pub(super) fn move_in_list(sel: &mut usize, len: usize, key: KeyCode) -> bool {
    let last = len.saturating_sub(1);
    *sel = match key {
        KeyCode::Char('j') | KeyCode::Down => (*sel + 1).min(last),
        KeyCode::Char('k') | KeyCode::Up => sel.saturating_sub(1),
        KeyCode::Char('g') | KeyCode::Home => 0,
        KeyCode::Char('G') | KeyCode::End => last,
        _ => return false,
    };
    true
}

/// The keys of each view: the footer shows the first ones, `?` all of them.
pub fn keys(view: View, overlay: &Overlay) -> &'static [(&'static str, &'static str)] {
    match overlay {
        Overlay::Form(_) => form::KEYS,
        Overlay::Move { .. } | Overlay::Pick { .. } => overlay::PICK_KEYS,
        Overlay::Prompt { .. } => overlay::PROMPT_KEYS,
        Overlay::Help => overlay::HELP_KEYS,
        Overlay::Artifact { .. } => overlay::ARTIFACT_KEYS,
        Overlay::None => match view {
            View::Board => board::KEYS,
            View::Task => detail::KEYS,
            View::Agents => agents::KEYS,
            View::Jobs => jobs::KEYS,
            View::Usage => super::usage::KEYS,
        },
    }
}
