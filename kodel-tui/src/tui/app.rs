//! The TUI's state and what keys and server messages do to it. No I/O here: a key or a
//! message changes the state and may ask for [`Effect`]s, which `net.rs` (and the event
//! loop, for the editor) carry out and answer with [`Msg`]s. That keeps every view's
//! key handling testable without a terminal or a server.

use std::collections::HashMap;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind};
use kodel_core::api::{Comment, Event, Org, Priority, Project, Task};
use kodel_core::infra::Agent;
use kodel_core::jobs::{Artifact, ArtifactState, Job, JobState};
use serde_json::{Value, json};
use uuid::Uuid;

use super::stream::{Entry, Stream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Board,
    Task,
    Agents,
    Jobs,
}

/// The connection to the server's event stream, as the status line shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conn {
    Connecting,
    Live,
    Retrying { attempt: u32, error: String },
}

#[derive(Debug, Clone, Default)]
pub struct Board {
    pub col: usize,
    pub row: usize,
    /// The task the cursor is on: the cursor follows it when tasks move or arrive.
    pub key: Option<String>,
    /// A list of every task instead of columns.
    pub list: bool,
    pub filter: String,
}

#[derive(Debug, Default)]
pub struct Detail {
    pub key: String,
    pub task: Option<Task>,
    pub comments: Vec<Comment>,
    pub jobs: Vec<Job>,
    pub artifacts: Vec<Artifact>,
    /// The artifact keys act on.
    pub art: usize,
    pub stream: Stream,
    /// The selected stream entry; None follows the newest.
    pub sel: Option<usize>,
    pub search: String,
    pub loaded: bool,
    /// Lines the info pane is scrolled by (`u`/`d`).
    pub info_scroll: u16,
    /// Lines skipped of the selected entry (PgDn/PgUp in a long, open output).
    pub sel_off: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Project,
    Org,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptFor {
    Filter,
    Search,
    Comment(String),
    Approve(Uuid),
    Reject(Uuid),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Title,
    Description,
    Priority,
    Labels,
    Assignee,
}

pub const FIELDS: [Field; 5] = [Field::Title, Field::Description, Field::Priority, Field::Labels, Field::Assignee];

/// Create or edit a task.
#[derive(Debug, Clone)]
pub struct Form {
    /// The task being edited (key, version), or None for a new one.
    pub editing: Option<(String, i32)>,
    pub title: String,
    pub description: String,
    pub priority: Priority,
    pub labels: String,
    pub assignee: String,
    pub field: usize,
    pub error: Option<String>,
    /// Sent, waiting for the server: a second save is not sent.
    pub saving: bool,
}

impl Form {
    pub fn new() -> Form {
        Form { editing: None, title: String::new(), description: String::new(), priority: Priority::None, labels: String::new(), assignee: String::new(), field: 0, error: None, saving: false }
    }

    pub fn edit(t: &Task) -> Form {
        Form {
            editing: Some((t.key.clone(), t.version)),
            title: t.title.clone(),
            description: t.description.clone(),
            priority: t.priority,
            labels: t.labels.join(", "),
            assignee: t.assignee.clone().unwrap_or_default(),
            field: 0,
            error: None,
            saving: false,
        }
    }

    fn text_mut(&mut self) -> Option<&mut String> {
        match FIELDS[self.field] {
            Field::Title => Some(&mut self.title),
            Field::Description => Some(&mut self.description),
            Field::Labels => Some(&mut self.labels),
            Field::Assignee => Some(&mut self.assignee),
            Field::Priority => None,
        }
    }
}

impl Default for Form {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone)]
pub enum Overlay {
    None,
    Help,
    Move { key: String, options: Vec<String>, sel: usize },
    Pick { what: Pick, items: Vec<(String, String)>, sel: usize },
    Form(Box<Form>),
    Prompt { purpose: PromptFor, input: String },
    /// The selected artifact's content (a diff, a review, a test report), scrolled.
    Artifact { scroll: usize },
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
    Live { key: String, payload: Value },
    OrgEvent(Event),
    /// The org stream lost its place (the server said resync): reload the board.
    Resync,
    Agents(Vec<Agent>),
    Jobs(Vec<Job>),
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
struct Moving {
    /// The task's version when the first of them was shown: a copy of the task no newer
    /// than this was read before the moves and must not undo them on screen.
    base: i32,
    /// Where the last of them puts it.
    to: String,
    count: usize,
}

pub struct App {
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
    pub overlay: Overlay,
    pub conn: Conn,
    /// A message for the footer, and whether it is an error.
    pub status: Option<(String, bool)>,
    pub quit: bool,
    pub loading: bool,
    /// The project asked for last: a board for another one (a late reply) is dropped.
    pub wanted: Option<String>,
    /// Save the settings when the next board arrives (after a switch).
    save_on_board: bool,
    /// Moves in flight, by task key (their status is shown before the server answers).
    moving: HashMap<String, Moving>,
}

impl App {
    pub fn new(org: String) -> App {
        App {
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

    /// Asks for a project's board (and remembers it is the one wanted).
    pub fn open_project(&mut self, key: String) -> Effect {
        self.wanted = Some(key.clone());
        Effect::OpenProject(key)
    }

    /// Puts the cursor back on the task it was on, wherever that task is now.
    fn reanchor(&mut self) {
        if let Some(key) = self.board.key.clone() {
            if self.board.list {
                if let Some(i) = self.list_tasks().iter().position(|t| t.key == key) {
                    self.board.row = i;
                }
            } else if let Some(t) = self.tasks.iter().find(|t| t.key == key && self.visible(t)) {
                let status = t.status.clone();
                if let Some(c) = self.columns().iter().position(|s| s.name == status) {
                    self.board.col = c;
                    self.board.row = self.column_tasks(&status).iter().position(|t| t.key == key).unwrap_or(0);
                }
            }
        }
        self.clamp_board();
        self.board.key = self.selected().map(|t| t.key.clone());
    }

    /// The workflow's statuses, in order.
    pub fn columns(&self) -> Vec<&kodel_core::api::Status> {
        let mut cols: Vec<_> = self.project.iter().flat_map(|p| p.workflow.statuses.iter()).collect();
        cols.sort_by_key(|s| s.position);
        cols
    }

    /// Whether a task passes the board's filter: words match the key or title,
    /// `#label` or `label:x` a label, `@who` the assignee.
    pub fn visible(&self, t: &Task) -> bool {
        self.board.filter.split_whitespace().all(|word| {
            let w = word.to_lowercase();
            if let Some(l) = w.strip_prefix('#').or_else(|| w.strip_prefix("label:")) {
                t.labels.iter().any(|x| x.to_lowercase().contains(l))
            } else if let Some(a) = w.strip_prefix('@') {
                t.assignee.as_deref().is_some_and(|x| x.to_lowercase().contains(a))
            } else {
                t.key.to_lowercase().contains(&w) || t.title.to_lowercase().contains(&w)
            }
        })
    }

    /// The tasks of a status that pass the filter, by number.
    pub fn column_tasks(&self, status: &str) -> Vec<&Task> {
        let mut ts: Vec<&Task> = self.tasks.iter().filter(|t| t.status == status && !t.archived && self.visible(t)).collect();
        ts.sort_by_key(|t| t.number);
        ts
    }

    /// Every visible task, by status order then number (the list view).
    pub fn list_tasks(&self) -> Vec<&Task> {
        let order: HashMap<&str, i32> = self.columns().iter().map(|s| (s.name.as_str(), s.position)).collect();
        let mut ts: Vec<&Task> = self.tasks.iter().filter(|t| !t.archived && self.visible(t)).collect();
        ts.sort_by_key(|t| (order.get(t.status.as_str()).copied().unwrap_or(i32::MAX), t.number));
        ts
    }

    /// The task the board's cursor is on.
    pub fn selected(&self) -> Option<&Task> {
        if self.board.list {
            return self.list_tasks().get(self.board.row).copied();
        }
        let cols = self.columns();
        let col = cols.get(self.board.col)?;
        self.column_tasks(&col.name).get(self.board.row).copied()
    }

    /// The task keys act on: the open one in the detail view, else the board's.
    fn current_task(&self) -> Option<&Task> {
        match self.view {
            View::Task => self.detail.as_ref().and_then(|d| d.task.as_ref()),
            _ => self.selected(),
        }
    }

    fn clamp_board(&mut self) {
        let cols = self.columns().len();
        if cols == 0 {
            self.board.col = 0;
            self.board.row = 0;
            return;
        }
        self.board.col = self.board.col.min(cols - 1);
        let rows = if self.board.list { self.list_tasks().len() } else { self.column_tasks(&self.columns()[self.board.col].name.clone()).len() };
        self.board.row = self.board.row.min(rows.saturating_sub(1));
    }

    fn say(&mut self, text: impl Into<String>) {
        self.status = Some((text.into(), false));
    }

    fn warn(&mut self, text: impl Into<String>) {
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
        // Keys every view shares.
        match k.code {
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
            KeyCode::Char('b') if self.view != View::Board && self.view != View::Task => {
                self.view = View::Board;
                return vec![];
            }
            _ => {}
        }
        match self.view {
            View::Board => self.board_key(k),
            View::Task => self.task_key(k),
            View::Agents => self.list_key(k, true),
            View::Jobs => self.list_key(k, false),
        }
    }

    fn leave_task(&mut self, mut effects: Vec<Effect>) -> Vec<Effect> {
        if self.detail.take().is_some() {
            effects.insert(0, Effect::CloseTask);
        }
        effects
    }

    fn board_key(&mut self, k: KeyEvent) -> Vec<Effect> {
        self.status = None;
        match k.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('h') | KeyCode::Left if !self.board.list => {
                self.board.col = self.board.col.saturating_sub(1);
                self.board.row = 0;
            }
            KeyCode::Char('l') | KeyCode::Right if !self.board.list => {
                self.board.col += 1;
                self.board.row = 0;
            }
            KeyCode::Char('j') | KeyCode::Down => self.board.row += 1,
            KeyCode::Char('k') | KeyCode::Up => self.board.row = self.board.row.saturating_sub(1),
            KeyCode::Char('g') | KeyCode::Home => self.board.row = 0,
            KeyCode::Char('G') | KeyCode::End => self.board.row = usize::MAX,
            KeyCode::Char('v') => {
                self.board.list = !self.board.list;
                self.board.row = 0;
            }
            KeyCode::Enter => {
                if let Some(t) = self.selected() {
                    let key = t.key.clone();
                    return self.open_task(key);
                }
            }
            KeyCode::Char('n') if self.project.is_some() => self.overlay = Overlay::Form(Box::default()),
            KeyCode::Char('e') => {
                if let Some(t) = self.selected() {
                    self.overlay = Overlay::Form(Box::new(Form::edit(t)));
                }
            }
            KeyCode::Char('m') => self.open_move(),
            KeyCode::Char('>') | KeyCode::Char('L') => return self.step_move(1),
            KeyCode::Char('<') | KeyCode::Char('H') => return self.step_move(-1),
            KeyCode::Char('/') => self.overlay = Overlay::Prompt { purpose: PromptFor::Filter, input: self.board.filter.clone() },
            KeyCode::Esc => self.board.filter.clear(),
            KeyCode::Char('p') => {
                let items = self.projects.iter().map(|p| (p.key.clone(), p.name.clone())).collect();
                self.overlay = Overlay::Pick { what: Pick::Project, items, sel: 0 };
                return vec![Effect::LoadProjects];
            }
            KeyCode::Char('o') => {
                let items = self.orgs.iter().map(|o| (o.slug.clone(), o.name.clone())).collect();
                self.overlay = Overlay::Pick { what: Pick::Org, items, sel: 0 };
                return vec![Effect::LoadOrgs];
            }
            KeyCode::Char('r') => {
                if let Some(p) = &self.project {
                    let key = p.key.clone();
                    return vec![self.open_project(key)];
                }
            }
            _ => {}
        }
        self.clamp_board();
        self.board.key = self.selected().map(|t| t.key.clone());
        vec![]
    }

    fn open_task(&mut self, key: String) -> Vec<Effect> {
        self.view = View::Task;
        self.detail = Some(Detail { key: key.clone(), ..Detail::default() });
        vec![Effect::OpenTask(key)]
    }

    fn open_move(&mut self) {
        let Some(t) = self.current_task() else { return };
        let key = t.key.clone();
        if self.project.as_ref().is_none_or(|p| p.key != t.project) {
            self.warn(format!("{key} is in project {}: open that project (p) to move its tasks", t.project));
            return;
        }
        let options = self.columns().iter().find(|s| s.name == t.status).map(|s| s.next.clone()).unwrap_or_default();
        if options.is_empty() {
            let status = t.status.clone();
            self.warn(format!("{key}: no move is allowed from {status}"));
            return;
        }
        self.overlay = Overlay::Move { key, options, sel: 0 };
    }

    /// Moves the task to the next (+1) or previous (-1) column, if the workflow allows it.
    fn step_move(&mut self, dir: i32) -> Vec<Effect> {
        let Some(t) = self.current_task() else { return vec![] };
        let (key, from) = (t.key.clone(), t.status.clone());
        if self.project.as_ref().is_none_or(|p| p.key != t.project) {
            self.warn(format!("{key} is in project {}: open that project (p) to move its tasks", t.project));
            return vec![];
        }
        let cols = self.columns();
        let Some(i) = cols.iter().position(|s| s.name == from) else { return vec![] };
        let Some(to) = (i as i32 + dir).try_into().ok().and_then(|j: usize| cols.get(j)) else { return vec![] };
        let to_name = to.name.clone();
        let allowed = cols[i].next.clone();
        if !allowed.contains(&to_name) {
            let list = if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") };
            self.warn(format!("{key}: {from} -> {to_name} is not allowed; allowed: {list}"));
            return vec![];
        }
        self.moved_locally(&key, &to_name);
        vec![Effect::Move { key, to: to_name }]
    }

    /// Shows a move at once (the server's answer, or its refusal, corrects it), with the
    /// cursor on the moved task.
    fn moved_locally(&mut self, key: &str, to: &str) {
        if let Some(t) = self.tasks.iter_mut().find(|t| t.key == key) {
            t.status = to.to_owned();
            let m = self.moving.entry(key.to_owned()).or_insert(Moving { base: t.version, to: String::new(), count: 0 });
            m.to = to.to_owned();
            m.count += 1;
        }
        if self.view == View::Board {
            self.board.key = Some(key.to_owned());
            self.reanchor();
        }
    }

    fn task_key(&mut self, k: KeyEvent) -> Vec<Effect> {
        self.status = None;
        let Some(d) = self.detail.as_mut() else {
            self.view = View::Board;
            return vec![];
        };
        let n = d.stream.entries.len();
        // An open output of the selected entry scrolls before the selection moves on.
        let sel_open = d.sel.and_then(|i| d.stream.entries.get(i)).is_some_and(|e| matches!(e, Entry::Tool { open: true, .. }));
        if !matches!(k.code, KeyCode::PageDown | KeyCode::PageUp) {
            d.sel_off = 0;
        }
        match k.code {
            KeyCode::Esc | KeyCode::Char('q') | KeyCode::Char('b') => {
                self.view = View::Board;
                return self.leave_task(vec![]);
            }
            KeyCode::Char('j') | KeyCode::Down if n > 0 => d.sel = d.sel.map(|s| (s + 1).min(n - 1)).or(Some(n - 1)),
            KeyCode::Char('k') | KeyCode::Up if n > 0 => d.sel = Some(d.sel.unwrap_or(n).saturating_sub(1)),
            KeyCode::PageDown if sel_open => d.sel_off += 10,
            KeyCode::PageUp if sel_open && d.sel_off > 0 => d.sel_off = d.sel_off.saturating_sub(10),
            KeyCode::PageDown if n > 0 => d.sel = d.sel.map(|s| (s + 10).min(n - 1)),
            KeyCode::PageUp if n > 0 => d.sel = Some(d.sel.unwrap_or(n).saturating_sub(10)),
            KeyCode::Char('d') => d.info_scroll = d.info_scroll.saturating_add(5),
            KeyCode::Char('u') => d.info_scroll = d.info_scroll.saturating_sub(5),
            KeyCode::Char('g') | KeyCode::Home => d.sel = (n > 0).then_some(0),
            KeyCode::Char('G') | KeyCode::End => d.sel = None,
            KeyCode::Enter | KeyCode::Char(' ') | KeyCode::Char('o') => {
                if let Some(i) = d.sel.or(n.checked_sub(1)) {
                    d.stream.toggle(i);
                }
            }
            KeyCode::Char('/') => self.overlay = Overlay::Prompt { purpose: PromptFor::Search, input: d.search.clone() },
            KeyCode::Char('n') => self.find(true),
            KeyCode::Char('N') => self.find(false),
            KeyCode::Tab if !d.artifacts.is_empty() => d.art = (d.art + 1) % d.artifacts.len(),
            KeyCode::Char('v') if !d.artifacts.is_empty() => self.overlay = Overlay::Artifact { scroll: 0 },
            KeyCode::Char('A') | KeyCode::Char('R') => {
                let approve = k.code == KeyCode::Char('A');
                match d.artifacts.get(d.art) {
                    Some(a) if a.status == ArtifactState::Pending => {
                        let purpose = if approve { PromptFor::Approve(a.id) } else { PromptFor::Reject(a.id) };
                        self.overlay = Overlay::Prompt { purpose, input: String::new() };
                    }
                    Some(a) => {
                        let msg = format!("{} is already {}", a.title, a.status.as_str());
                        self.warn(msg);
                    }
                    None => self.warn("this task has no artifact to decide on yet"),
                }
            }
            KeyCode::Char('c') => {
                let key = d.key.clone();
                self.overlay = Overlay::Prompt { purpose: PromptFor::Comment(key), input: String::new() };
            }
            KeyCode::Char('e') => {
                if let Some(t) = &d.task {
                    self.overlay = Overlay::Form(Box::new(Form::edit(t)));
                }
            }
            KeyCode::Char('m') => self.open_move(),
            KeyCode::Char('>') | KeyCode::Char('L') => return self.step_move(1),
            KeyCode::Char('<') | KeyCode::Char('H') => return self.step_move(-1),
            KeyCode::Char('r') => {
                let key = d.key.clone();
                return vec![Effect::ReloadDetail(key)];
            }
            _ => {}
        }
        vec![]
    }

    /// Selects the next (or previous) stream entry that holds the search text.
    fn find(&mut self, forward: bool) {
        let Some(d) = self.detail.as_mut() else { return };
        let needle = d.search.to_lowercase();
        if needle.is_empty() {
            return;
        }
        let n = d.stream.entries.len();
        let start = d.sel.unwrap_or(n);
        let hit = if forward {
            (start + 1..n).chain(0..start.min(n)).find(|&i| d.stream.entries[i].text().to_lowercase().contains(&needle))
        } else {
            (0..start.min(n)).rev().chain((start..n).rev()).find(|&i| d.stream.entries[i].text().to_lowercase().contains(&needle))
        };
        match hit {
            Some(i) => d.sel = Some(i),
            None => {
                let msg = format!("{:?} is not in the stream", d.search);
                self.warn(msg);
            }
        }
    }

    fn list_key(&mut self, k: KeyEvent, agents: bool) -> Vec<Effect> {
        self.status = None;
        let len = if agents { self.agents.len() } else { self.jobs.len() };
        let sel = if agents { &mut self.agents_sel } else { &mut self.jobs_sel };
        match k.code {
            KeyCode::Char('q') | KeyCode::Esc => self.view = View::Board,
            KeyCode::Char('j') | KeyCode::Down => *sel = (*sel + 1).min(len.saturating_sub(1)),
            KeyCode::Char('k') | KeyCode::Up => *sel = sel.saturating_sub(1),
            KeyCode::Char('g') | KeyCode::Home => *sel = 0,
            KeyCode::Char('G') | KeyCode::End => *sel = len.saturating_sub(1),
            KeyCode::Char('r') => return vec![if agents { Effect::LoadAgents } else { Effect::LoadJobs }],
            KeyCode::Tab => {
                self.view = if agents { View::Jobs } else { View::Agents };
                return vec![if agents { Effect::LoadJobs } else { Effect::LoadAgents }];
            }
            KeyCode::Enter if !agents => {
                if let Some(j) = self.jobs.get(self.jobs_sel) {
                    let key = j.task.clone();
                    return self.open_task(key);
                }
            }
            _ => {}
        }
        vec![]
    }

    fn overlay_key(&mut self, k: KeyEvent) -> Vec<Effect> {
        let overlay = std::mem::replace(&mut self.overlay, Overlay::None);
        match overlay {
            Overlay::None => vec![],
            Overlay::Help => vec![], // any key closes it
            Overlay::Artifact { mut scroll } => match k.code {
                KeyCode::Esc | KeyCode::Char('q') | KeyCode::Char('v') => vec![],
                // Decide from here too: the prompt replaces the view.
                KeyCode::Char('A') | KeyCode::Char('R') => self.task_key(k),
                _ => {
                    match k.code {
                        KeyCode::Char('j') | KeyCode::Down => scroll += 1,
                        KeyCode::Char('k') | KeyCode::Up => scroll = scroll.saturating_sub(1),
                        KeyCode::PageDown | KeyCode::Char(' ') | KeyCode::Char('d') => scroll += 20,
                        KeyCode::PageUp | KeyCode::Char('u') => scroll = scroll.saturating_sub(20),
                        KeyCode::Char('g') | KeyCode::Home => scroll = 0,
                        _ => {}
                    }
                    self.overlay = Overlay::Artifact { scroll };
                    vec![]
                }
            },
            Overlay::Move { key, options, mut sel } => match k.code {
                KeyCode::Esc | KeyCode::Char('q') => vec![],
                KeyCode::Char('j') | KeyCode::Down => {
                    sel = (sel + 1).min(options.len().saturating_sub(1));
                    self.overlay = Overlay::Move { key, options, sel };
                    vec![]
                }
                KeyCode::Char('k') | KeyCode::Up => {
                    sel = sel.saturating_sub(1);
                    self.overlay = Overlay::Move { key, options, sel };
                    vec![]
                }
                KeyCode::Enter => {
                    let to = options[sel].clone();
                    self.moved_locally(&key, &to);
                    vec![Effect::Move { key, to }]
                }
                _ => {
                    self.overlay = Overlay::Move { key, options, sel };
                    vec![]
                }
            },
            Overlay::Pick { what, items, mut sel } => match k.code {
                KeyCode::Esc | KeyCode::Char('q') => vec![],
                KeyCode::Char('j') | KeyCode::Down => {
                    sel = (sel + 1).min(items.len().saturating_sub(1));
                    self.overlay = Overlay::Pick { what, items, sel };
                    vec![]
                }
                KeyCode::Char('k') | KeyCode::Up => {
                    sel = sel.saturating_sub(1);
                    self.overlay = Overlay::Pick { what, items, sel };
                    vec![]
                }
                KeyCode::Enter => match (what, items.get(sel)) {
                    (Pick::Project, Some((key, _))) => {
                        self.board = Board::default();
                        self.loading = true;
                        self.save_on_board = true;
                        let key = key.clone();
                        vec![self.open_project(key)]
                    }
                    (Pick::Org, Some((slug, _))) => {
                        self.org = slug.clone();
                        self.project = None;
                        self.wanted = None;
                        self.projects.clear();
                        self.tasks.clear();
                        self.running.clear();
                        self.board = Board::default();
                        self.loading = true;
                        self.save_on_board = true;
                        vec![Effect::FollowOrg, Effect::LoadProjects]
                    }
                    _ => vec![],
                },
                _ => {
                    self.overlay = Overlay::Pick { what, items, sel };
                    vec![]
                }
            },
            Overlay::Prompt { purpose, mut input } => match k.code {
                KeyCode::Esc => vec![],
                KeyCode::Enter => self.submit_prompt(purpose, input),
                KeyCode::Backspace => {
                    input.pop();
                    self.overlay = Overlay::Prompt { purpose, input };
                    vec![]
                }
                KeyCode::Char(c) if !k.modifiers.contains(KeyModifiers::CONTROL) => {
                    input.push(c);
                    self.overlay = Overlay::Prompt { purpose, input };
                    vec![]
                }
                _ => {
                    self.overlay = Overlay::Prompt { purpose, input };
                    vec![]
                }
            },
            // Esc closes the form; it stays open until the server took it (`Msg::Saved`).
            Overlay::Form(_) if k.code == KeyCode::Esc => vec![],
            Overlay::Form(mut form) => {
                let effects = self.form_key(&mut form, k);
                self.overlay = Overlay::Form(form);
                effects
            }
        }
    }

    fn submit_prompt(&mut self, purpose: PromptFor, input: String) -> Vec<Effect> {
        let text = input.trim().to_owned();
        match purpose {
            PromptFor::Filter => {
                self.board.filter = text;
                self.board.row = 0;
                self.clamp_board();
                vec![]
            }
            PromptFor::Search => {
                if let Some(d) = self.detail.as_mut() {
                    d.search = text;
                    d.sel = None;
                }
                self.find(false);
                vec![]
            }
            PromptFor::Comment(key) => {
                if text.is_empty() {
                    return vec![];
                }
                vec![Effect::Comment { key, body: text }]
            }
            PromptFor::Approve(id) => vec![Effect::Decide { id, approve: true, comment: (!text.is_empty()).then_some(text) }],
            PromptFor::Reject(id) => vec![Effect::Decide { id, approve: false, comment: (!text.is_empty()).then_some(text) }],
        }
    }

    fn form_key(&mut self, f: &mut Form, k: KeyEvent) -> Vec<Effect> {
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        f.error = None;
        match k.code {
            KeyCode::Char('s') if ctrl => return self.submit_form(f),
            KeyCode::Char('e') if ctrl => return vec![Effect::Edit(f.description.clone())],
            KeyCode::Tab | KeyCode::Down => f.field = (f.field + 1) % FIELDS.len(),
            KeyCode::BackTab | KeyCode::Up => f.field = (f.field + FIELDS.len() - 1) % FIELDS.len(),
            KeyCode::Enter if FIELDS[f.field] == Field::Description => f.description.push('\n'),
            KeyCode::Enter => return self.submit_form(f),
            KeyCode::Left | KeyCode::Right | KeyCode::Char(' ') if FIELDS[f.field] == Field::Priority => {
                const ORDER: [Priority; 5] = [Priority::None, Priority::Low, Priority::Medium, Priority::High, Priority::Urgent];
                let i = ORDER.iter().position(|p| *p == f.priority).unwrap_or(0);
                let next = if k.code == KeyCode::Left { (i + ORDER.len() - 1) % ORDER.len() } else { (i + 1) % ORDER.len() };
                f.priority = ORDER[next];
            }
            KeyCode::Backspace => {
                if let Some(t) = f.text_mut() {
                    t.pop();
                }
            }
            KeyCode::Char(c) if !ctrl => {
                if let Some(t) = f.text_mut() {
                    t.push(c);
                }
            }
            _ => {}
        }
        vec![]
    }

    fn submit_form(&mut self, f: &mut Form) -> Vec<Effect> {
        if f.saving {
            return vec![];
        }
        let title = f.title.trim();
        if title.is_empty() {
            f.error = Some("a task needs a title".into());
            f.field = 0;
            return vec![];
        }
        let labels: Vec<String> = f.labels.split(',').map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
        let assignee = f.assignee.trim();
        let assignee = (!assignee.is_empty()).then(|| assignee.to_owned());
        f.saving = self.project.is_some() || f.editing.is_some();
        match &f.editing {
            Some((key, version)) => vec![Effect::Update {
                key: key.clone(),
                body: json!({ "version": version, "title": title, "description": f.description, "priority": f.priority, "labels": labels, "assignee": assignee }),
            }],
            None => match &self.project {
                Some(p) => vec![Effect::Create {
                    project: p.key.clone(),
                    body: json!({ "title": title, "description": f.description, "priority": f.priority, "labels": labels, "assignee": assignee }),
                }],
                None => {
                    f.error = Some("no project to add the task to".into());
                    vec![]
                }
            },
        }
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
            Msg::Live { key, payload } => {
                if let Some(d) = self.detail.as_mut().filter(|d| d.key == key) {
                    let dropped = d.stream.dropped;
                    d.stream.live(&payload);
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
        let kind = ev.kind.as_str();
        match kind {
            "job.created" | "job.started" | "job.requeued" => {
                self.running.insert(ev.task.clone(), ev.payload["kind"].as_str().unwrap_or("ai").to_owned());
            }
            "job.succeeded" | "job.failed" | "job.cancelled" => {
                self.running.remove(&ev.task);
            }
            _ => {}
        }
        if ours && (kind.starts_with("task.") || kind == "comment.added" || kind.starts_with("artifact.")) {
            effects.push(Effect::RefreshTask(ev.task.clone()));
        }
        let open = self.detail.as_ref().is_some_and(|d| d.key == ev.task);
        if open && (kind.starts_with("job.") && kind != "job.step" && kind != "job.llm_call" || kind.starts_with("artifact.") || kind == "comment.added" || kind.starts_with("task.")) {
            effects.push(Effect::ReloadDetail(ev.task.clone()));
        }
        if kind.starts_with("job.") && kind != "job.step" && kind != "job.llm_call" {
            match self.view {
                View::Jobs => effects.push(Effect::LoadJobs),
                View::Agents => effects.push(Effect::LoadAgents),
                _ => {}
            }
        }
        effects
    }
}

/// The keys of each view: the footer shows the first ones, `?` all of them.
pub fn keys(view: View, overlay: &Overlay) -> &'static [(&'static str, &'static str)] {
    match overlay {
        Overlay::Form(_) => &[("Tab", "next field"), ("Ctrl-S", "save"), ("Enter", "save (newline in description)"), ("Ctrl-E", "$EDITOR"), ("←/→", "priority"), ("Esc", "cancel")],
        Overlay::Move { .. } | Overlay::Pick { .. } => &[("j/k", "choose"), ("Enter", "pick"), ("Esc", "cancel")],
        Overlay::Prompt { .. } => &[("Enter", "ok"), ("Esc", "cancel")],
        Overlay::Help => &[("any key", "close")],
        Overlay::Artifact { .. } => &[("j/k", "scroll"), ("PgDn/PgUp", "page"), ("A/R", "approve/reject"), ("Esc", "close")],
        Overlay::None => match view {
            View::Board => &[
                ("?", "keys"),
                ("q", "quit"),
                ("h/j/k/l", "move around"),
                ("Enter", "open"),
                ("n", "new"),
                ("</>", "move task"),
                ("m", "move to..."),
                ("/", "filter"),
                ("e", "edit"),
                ("v", "list/board"),
                ("p", "project"),
                ("o", "org"),
                ("a", "agents"),
                ("J", "jobs"),
                ("r", "reload"),
                ("Esc", "clear filter"),
                ("filter", "words, #label, @assignee"),
            ],
            View::Task => &[
                ("?", "keys"),
                ("Esc", "back"),
                ("j/k", "select"),
                ("Enter", "fold output"),
                ("A/R", "approve/reject"),
                ("Tab", "next artifact"),
                ("v", "view artifact"),
                ("c", "comment"),
                ("G", "follow"),
                ("u/d", "scroll the task"),
                ("PgUp/PgDn", "page (in an open output first)"),
                ("g", "top"),
                ("/", "search"),
                ("n/N", "next/prev match"),
                ("e", "edit"),
                ("m", "move to..."),
                ("</>", "move task"),
                ("r", "reload"),
            ],
            View::Agents => &[("j/k", "select"), ("Tab", "jobs"), ("r", "reload"), ("b/Esc", "board"), ("?", "keys")],
            View::Jobs => &[("j/k", "select"), ("Enter", "open task"), ("Tab", "agents"), ("r", "reload"), ("b/Esc", "board"), ("?", "keys")],
        },
    }
}

impl Detail {
    /// Keeps the selection on the same entry when old ones were dropped off the front.
    fn keep_selection(&mut self, dropped_before: usize) {
        let gone = self.stream.dropped - dropped_before;
        if gone > 0
            && let Some(s) = self.sel
        {
            self.sel = Some(s.saturating_sub(gone));
        }
    }
}

/// Whether an entry is what a search matches (for highlighting).
pub fn matches(e: &Entry, needle: &str) -> bool {
    !needle.is_empty() && e.text().to_lowercase().contains(&needle.to_lowercase())
}
