//! The board: the workflow's statuses as columns of cards (or one list of every task,
//! `v`), a filter, and moving tasks between statuses where the workflow allows.

use std::collections::HashMap;

use crossterm::event::{KeyCode, KeyEvent};
use kodel_core::api::Task;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Borders, Cell, List, ListItem, ListState, Paragraph, Row, Table, TableState};

use super::app::{App, Conn, Effect, Moving, View};
use super::form::Form;
use super::overlay::{Overlay, Pick, PromptFor};
use super::ui::{Theme, truncate};

/// Where the board's cursor is, and what it shows.
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

/// The board's keys (the footer shows the first ones, `?` all).
pub const KEYS: &[(&str, &str)] = &[
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
    ("U", "usage"),
    ("r", "reload"),
    ("Esc", "clear filter"),
    ("filter", "words, #label, @assignee"),
];

impl App {
    /// Puts the cursor back on the task it was on, wherever that task is now.
    pub(super) fn reanchor(&mut self) {
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

    pub(super) fn clamp_board(&mut self) {
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

    pub(super) fn board_key(&mut self, k: KeyEvent) -> Vec<Effect> {
        self.status = None;
        match k.code {
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

    pub(super) fn open_move(&mut self) {
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
    pub(super) fn step_move(&mut self, dir: i32) -> Vec<Effect> {
        let Some(t) = self.current_task() else { return vec![] };
        let (key, from) = (t.key.clone(), t.status.clone());
        if self.project.as_ref().is_none_or(|p| p.key != t.project) {
            self.warn(format!("{key} is in project {}: open that project (p) to move its tasks", t.project));
            return vec![];
        }
        let cols = self.columns();
        let Some(i) = cols.iter().position(|s| s.name == from) else { return vec![] };
        let Some(to) = (i as i32 + dir).try_into().ok().and_then(|j: usize| cols.get(j)) else {
            let end = if dir < 0 { "first" } else { "last" };
            self.warn(format!("{key} is in {from}, the workflow's {end} status: nothing {}", if dir < 0 { "before it" } else { "after it" }));
            return vec![];
        };
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
    pub(super) fn moved_locally(&mut self, key: &str, to: &str) {
        if let Some(t) = self.tasks.iter_mut().find(|t| t.key == key) {
            t.status = to.to_owned();
            let m = self.moving.entry(key.to_owned()).or_insert(Moving { base: t.version, to: String::new(), count: 0 });
            m.to = to.to_owned();
            m.count += 1;
        }
        // The task's pane shows it too, and the next `>` there starts from here.
        if let Some(t) = self.detail.as_mut().and_then(|d| d.task.as_mut()).filter(|t| t.key == key) {
            t.status = to.to_owned();
        }
        if self.view == View::Board {
            self.board.key = Some(key.to_owned());
            self.reanchor();
        }
    }

}

/// A card: key (and the AI marker), title, who and labels.
fn card<'a>(t: &Task, running: Option<&String>, width: usize, theme: Theme) -> ListItem<'a> {
    let mut first = vec![Span::styled(t.key.clone(), theme.hint())];
    if let Some(kind) = running {
        first.push(Span::styled(format!(" ⚙ {kind}"), theme.agent()));
    }
    if t.priority.as_str() != "none" {
        first.push(Span::styled(format!(" {}", t.priority.as_str()), theme.dim()));
    }
    let mut lines = vec![Line::from(first), Line::from(truncate(&t.title, width))];
    let mut meta = Vec::new();
    if let Some(a) = &t.assignee {
        meta.push(format!("@{}", a.split('@').next().unwrap_or(a)));
    }
    meta.extend(t.labels.iter().map(|l| format!("#{l}")));
    if !meta.is_empty() {
        lines.push(Line::styled(truncate(&meta.join(" "), width), theme.dim()));
    }
    ListItem::new(Text::from(lines))
}

/// How many of a list's items (of these heights) are out of view above and below, in
/// `height` rows scrolled as a list drawn afresh is: from the top, just enough to show
/// the selected one.
fn hidden(heights: &[usize], selected: Option<usize>, height: usize) -> (usize, usize) {
    let sel = selected.unwrap_or(0).min(heights.len().saturating_sub(1));
    let mut first = 0;
    while first < sel && heights[first..=sel].iter().sum::<usize>() > height {
        first += 1;
    }
    let mut used = 0;
    let mut last = first;
    while last < heights.len() && used + heights[last] <= height {
        used += heights[last];
        last += 1;
    }
    (first, heights.len() - last)
}

/// The columns that fit, scrolled to keep the cursor's in view.
pub(super) fn draw(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let cols = app.columns();
    if cols.is_empty() {
        let text = match &app.conn {
            Conn::Retrying { error, .. } => format!("Cannot reach the server ({error}); trying again. Is it running? `kodel up` starts a local one."),
            _ if app.loading => "loading...".to_owned(),
            _ => "No project yet: create one with `kodel project create KEY --name NAME`, then press p.".to_owned(),
        };
        f.render_widget(Paragraph::new(text).style(theme.dim()).wrap(ratatui::widgets::Wrap { trim: true }), area);
        return;
    }
    let area = filter_line(f, area, app, theme);
    // As many columns as fit at 18 cells each, scrolled to keep the cursor's in view.
    let fit = ((area.width as usize) / 18).clamp(1, cols.len());
    let first = app.board.col.saturating_sub(fit - 1).min(cols.len() - fit);
    let shown = &cols[first..first + fit];
    let areas = Layout::horizontal(vec![Constraint::Fill(1); shown.len()]).split(area);
    for (i, (status, a)) in shown.iter().zip(areas.iter()).enumerate() {
        let col = first + i;
        let tasks = app.column_tasks(&status.name);
        let mut title = format!(" {} ({}) ", status.name, tasks.len());
        if i == 0 && first > 0 {
            title = format!("‹{title}");
        }
        if i == shown.len() - 1 && first + fit < cols.len() {
            title.push('›');
        }
        let active = col == app.board.col;
        let mut block = Block::default().borders(Borders::ALL).title(Span::styled(title, if active { theme.title() } else { theme.dim() }));
        if let Some(b) = &status.binding {
            block = block.title_bottom(Span::styled(format!(" ⚙ {} ", b.template.trim_end_matches("-template")), theme.agent()));
        }
        let width = a.width.saturating_sub(2) as usize;
        let items: Vec<ListItem> = tasks.iter().map(|t| card(t, app.running.get(&t.key), width, theme)).collect();
        let mut state = ListState::default();
        if active && !tasks.is_empty() {
            state.select(Some(app.board.row.min(tasks.len() - 1)));
        }
        // Cards the column has no room for, said on its frame.
        let heights: Vec<usize> = items.iter().map(ListItem::height).collect();
        let (above, below) = hidden(&heights, state.selected(), a.height.saturating_sub(2) as usize);
        if above > 0 {
            block = block.title(ratatui::text::Line::styled(format!(" ↑{above} "), theme.dim()).right_aligned());
        }
        if below > 0 {
            block = block.title_bottom(ratatui::text::Line::styled(format!(" ↓{below} more "), theme.dim()).right_aligned());
        }
        f.render_stateful_widget(List::new(items).block(block).highlight_style(theme.selected()), *a, &mut state);
    }
}

/// An active filter, on a line of its own above the board or list: a board that shows
/// fewer tasks than there are says why. Returns the area left below it.
fn filter_line(f: &mut Frame, area: Rect, app: &App, theme: Theme) -> Rect {
    if app.board.filter.trim().is_empty() || area.height < 4 {
        return area;
    }
    let [line, rest] = Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(area);
    let text = Line::from(vec![
        Span::styled(" filter: ", theme.dim()),
        Span::styled(app.board.filter.trim().to_owned(), theme.title()),
        Span::styled("  (/ changes it, Esc clears it)", theme.dim()),
    ]);
    f.render_widget(Paragraph::new(text), line);
    rest
}

/// Every task in one table (`v`).
pub(super) fn draw_list(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let area = filter_line(f, area, app, theme);
    let tasks = app.list_tasks();
    let rows: Vec<Row> = tasks
        .iter()
        .map(|t| {
            let ai = app.running.get(&t.key).map(|k| format!("⚙ {k}")).unwrap_or_default();
            Row::new(vec![
                Cell::from(Span::styled(t.key.clone(), theme.hint())),
                Cell::from(t.status.clone()),
                Cell::from(t.priority.as_str()),
                Cell::from(t.title.clone()),
                Cell::from(t.assignee.clone().unwrap_or_default()),
                Cell::from(t.labels.join(",")),
                Cell::from(Span::styled(ai, theme.agent())),
            ])
        })
        .collect();
    let widths = [Constraint::Length(9), Constraint::Length(12), Constraint::Length(7), Constraint::Fill(3), Constraint::Fill(1), Constraint::Fill(1), Constraint::Length(12)];
    let header = Row::new(["KEY", "STATUS", "PRI", "TITLE", "ASSIGNEE", "LABELS", "AI"]).style(theme.dim());
    let mut state = TableState::default();
    if !tasks.is_empty() {
        state.select(Some(app.board.row.min(tasks.len() - 1)));
    }
    let table = Table::new(rows, widths).header(header).row_highlight_style(theme.selected()).block(Block::default().borders(Borders::ALL).title(format!(" {} tasks ", tasks.len())));
    f.render_stateful_widget(table, area, &mut state);
}
