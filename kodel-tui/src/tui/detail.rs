//! A task (`Enter` on the board): the task, its artifacts, jobs and comments on one side,
//! its story with the agent working live on the other; approving or rejecting an
//! artifact, commenting, searching the story.

use crossterm::event::{KeyCode, KeyEvent};
use kodel_core::api::{Comment, Task};
use kodel_core::jobs::{Artifact, ArtifactState, Job, JobState};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};

use super::app::{App, Effect, View};
use super::form::Form;
use super::overlay::{Overlay, Pick, PromptFor};
use super::stream::{Entry, Stream};
use super::ui::{Theme, truncate, wrap};

/// The open task and what the view shows of it.
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

impl Detail {
    /// Keeps the selection on the same entry when old ones were dropped off the front.
    pub(super) fn keep_selection(&mut self, dropped_before: usize) {
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

/// The task view's keys.
pub const KEYS: &[(&str, &str)] = &[
    ("?", "keys"),
    ("Esc/b", "back"),
    ("q", "quit"),
    ("j/k", "select"),
    ("Enter", "fold output"),
    ("A/R", "approve/reject"),
    ("Tab", "next artifact"),
    ("v", "view artifact"),
    ("c", "comment"),
    ("s", "start a job (retry)"),
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
];

impl App {
    pub(super) fn open_task(&mut self, key: String) -> Vec<Effect> {
        self.view = View::Task;
        self.detail = Some(Detail { key: key.clone(), ..Detail::default() });
        vec![Effect::OpenTask(key)]
    }

    pub(super) fn task_key(&mut self, k: KeyEvent) -> Vec<Effect> {
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
            KeyCode::Esc | KeyCode::Char('b') => {
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
            KeyCode::Char('s') => {
                self.overlay = Overlay::Pick { what: Pick::Template, items: Vec::new(), sel: 0 };
                return vec![Effect::LoadTemplates];
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
    pub(super) fn find(&mut self, forward: bool) {
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

}

/// The task beside its stream (above it when the screen is narrow).
pub(super) fn draw(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let Some(d) = &app.detail else { return };
    let (info, stream) = if area.width >= 100 {
        let [a, b] = Layout::horizontal([Constraint::Percentage(38), Constraint::Percentage(62)]).areas(area);
        (a, b)
    } else {
        let [a, b] = Layout::vertical([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(area);
        (a, b)
    };
    // The task, its jobs, artifacts and comments.
    let width = info.width.saturating_sub(2) as usize;
    let mut lines: Vec<Line> = Vec::new();
    match &d.task {
        None => lines.push(Line::styled("loading...", theme.dim())),
        Some(t) => {
            lines.push(Line::styled(truncate(&t.title, width), theme.title()));
            let mut meta = vec![Span::raw(t.status.clone()), Span::styled(format!("  {}", t.priority.as_str()), theme.dim())];
            if let Some(a) = &t.assignee {
                meta.push(Span::raw(format!("  @{a}")));
            }
            if let Some(kind) = app.running.get(&t.key) {
                meta.push(Span::styled(format!("  ⚙ {kind} running"), theme.agent()));
            }
            lines.push(Line::from(meta));
            if !t.labels.is_empty() {
                lines.push(Line::styled(t.labels.iter().map(|l| format!("#{l}")).collect::<Vec<_>>().join(" "), theme.dim()));
            }
        }
    }
    if !d.artifacts.is_empty() {
        lines.push(Line::raw(""));
        lines.push(Line::styled("Artifacts (Tab, v view, A/R decide)", theme.title()));
        for (i, a) in d.artifacts.iter().enumerate() {
            let state = match a.status {
                ArtifactState::Pending => Span::styled("pending ", theme.hint()),
                ArtifactState::Approved => Span::styled("approved", theme.ok()),
                ArtifactState::Rejected => Span::styled("rejected", theme.error()),
            };
            let mut line = Line::from(vec![state, Span::raw(format!(" {}: {}", a.kind.as_str(), truncate(&a.title, width.saturating_sub(20))))]);
            if i == d.art {
                line = line.style(theme.selected());
            }
            lines.push(line);
        }
    }
    if !d.jobs.is_empty() {
        lines.push(Line::raw(""));
        lines.push(Line::styled("Jobs", theme.title()));
        if let Some(spent) = spent(&d.jobs) {
            lines.push(Line::styled(spent, theme.dim()));
        }
        for j in d.jobs.iter().take(5) {
            let style = match j.status {
                JobState::Failed => theme.error(),
                JobState::Succeeded => theme.ok(),
                JobState::Running | JobState::Pending => theme.agent(),
                JobState::Paused => theme.warn(),
                JobState::Cancelled => theme.dim(),
            };
            let mut text = format!("{} {}", j.kind.as_str(), j.status.as_str());
            if let Some(e) = &j.error {
                text.push_str(&format!(": {}", crate::commands::logs::whole(e)));
            }
            // An error wraps (four lines at most; `J` shows it whole): its hint is
            // rarely in its first words.
            let wrapped = super::ui::wrap(&text, width.max(1));
            let more = wrapped.len() > 4;
            for (n, l) in wrapped.into_iter().take(4).enumerate() {
                let l = if more && n == 3 { truncate(&format!("{l}…"), width) } else { l };
                lines.push(Line::styled(l, style));
            }
        }
    }
    // What to act on first (it must fit in 80x24), then what to read.
    if let Some(t) = &d.task
        && !t.description.trim().is_empty()
    {
        lines.push(Line::raw(""));
        for l in wrap(t.description.trim(), width).into_iter().take(200) {
            lines.push(Line::raw(l));
        }
    }
    if !d.comments.is_empty() {
        lines.push(Line::raw(""));
        lines.push(Line::styled(format!("Comments ({})", d.comments.len()), theme.title()));
        for c in d.comments.iter().rev().take(20).rev() {
            lines.push(Line::styled(format!("{} {}", c.author.split('@').next().unwrap_or_default(), c.created_at.format("%m-%d %H:%M")), theme.dim()));
            for l in wrap(c.body.trim(), width).into_iter().take(12) {
                lines.push(Line::raw(l));
            }
        }
    }
    let title = format!(" {} ", d.key);
    let more = if d.info_scroll > 0 { " u/d scroll " } else { "" };
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(title).title_bottom(Span::styled(more, theme.dim()))).wrap(Wrap { trim: false }).scroll((d.info_scroll, 0)),
        info,
    );
    draw_stream(f, stream, app, theme);
}

/// The stream, drawn from the selected entry (or the newest) outwards: only what fits
/// is laid out, however long the stream is.
fn draw_stream(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let Some(d) = &app.detail else { return };
    let width = area.width.saturating_sub(2) as usize;
    let height = area.height.saturating_sub(2) as usize;
    let entries = &d.stream.entries;
    let follow = d.sel.is_none();
    let title = match (follow, d.loaded) {
        (_, false) => " agent stream (loading) ".to_owned(),
        (true, _) => format!(" agent stream ({}) following ", entries.len()),
        (false, _) => format!(" agent stream ({}/{}) ", d.sel.unwrap_or(0) + 1, entries.len()),
    };
    let block = Block::default().borders(Borders::ALL).title(title);
    if entries.is_empty() {
        let text = if d.loaded { "Nothing yet: an AI job's work shows here as it happens." } else { "" };
        f.render_widget(Paragraph::new(Span::styled(text, theme.dim())).block(block), area);
        return;
    }
    let render = |i: usize| {
        let mut l = entry_lines(&entries[i], width, Some(i) == d.sel, matches(&entries[i], &d.search), theme);
        // The selected entry scrolled (PgDn in a long output): its head line stays.
        if Some(i) == d.sel && d.sel_off > 0 && l.len() > 1 {
            let skip = d.sel_off.min(l.len().saturating_sub(2));
            l.drain(1..1 + skip);
        }
        l
    };
    // Lay out only what fits: when following, the newest entries upwards from the
    // bottom; with a selection, half a screen above it, then it and what follows.
    let (end, budget) = match d.sel {
        None => (entries.len(), height),
        Some(sel) => (sel.min(entries.len() - 1), height / 2),
    };
    let mut above: Vec<Vec<Line>> = Vec::new();
    let (mut count, mut i) = (0, end);
    while i > 0 && count < budget {
        i -= 1;
        let l = render(i);
        count += l.len();
        above.push(l);
    }
    let mut lines: Vec<Line> = above.into_iter().rev().flatten().collect();
    if lines.len() > budget {
        lines.drain(..lines.len() - budget);
    }
    let mut j = end;
    while lines.len() < height && j < entries.len() {
        lines.extend(render(j));
        j += 1;
    }
    lines.truncate(height);
    f.render_widget(Paragraph::new(lines).block(block), area);
}

fn entry_lines<'a>(e: &Entry, width: usize, selected: bool, hit: bool, theme: Theme) -> Vec<Line<'a>> {
    let mark = if selected { "›" } else { " " };
    let mut out: Vec<Line> = Vec::new();
    match e {
        Entry::Event { time, kind, text, error } => {
            let style = if *error { theme.error() } else { theme.dim() };
            // Wrapped: an error's hint (which variable to set) must be readable whole.
            for (n, l) in wrap(&format!("{time} {kind} {text}"), width.saturating_sub(1)).into_iter().enumerate() {
                let lead = if n == 0 { mark.to_owned() } else { " ".to_owned() };
                out.push(Line::from(vec![Span::raw(lead), Span::styled(l, style)]));
            }
        }
        Entry::Said { text, live, .. } => {
            for (n, l) in wrap(text.trim_end(), width.saturating_sub(3)).into_iter().enumerate() {
                let lead = if n == 0 { format!("{mark}▌ ") } else { " ▌ ".to_owned() };
                out.push(Line::from(vec![Span::styled(lead, theme.agent()), Span::raw(l)]));
            }
            if *live {
                out.push(Line::styled(" ▌ …", theme.agent()));
            }
        }
        Entry::Tool { tool, input, output, error, live, open, ms, .. } => {
            let fold = if *open { "▾" } else { "▸" };
            let mut head = vec![Span::raw(mark.to_owned()), Span::styled(format!("{fold} {tool} "), if *error { theme.error() } else { theme.hint() }), Span::raw(truncate(input, width.saturating_sub(tool.len() + 12)))];
            if let Some(ms) = ms {
                head.push(Span::styled(format!(" ({ms} ms)"), theme.dim()));
            }
            if *live {
                head.push(Span::styled(" running", theme.agent()));
            }
            let lines = output.lines().count();
            if !*open && lines > 0 {
                head.push(Span::styled(format!(" [{lines} lines]"), theme.dim()));
            }
            out.push(Line::from(head));
            if *open {
                let wrapped = wrap(output.trim_end(), width.saturating_sub(4));
                let skip = wrapped.len().saturating_sub(200);
                if skip > 0 {
                    out.push(Line::styled(format!("    [{skip} earlier lines]"), theme.dim()));
                }
                let style = if *error { theme.error() } else { theme.dim() };
                for l in wrapped.into_iter().skip(skip) {
                    out.push(Line::styled(format!("    {l}"), style));
                }
            }
        }
    }
    if hit {
        for l in &mut out {
            *l = l.clone().style(Style::default().add_modifier(Modifier::UNDERLINED));
        }
    }
    if selected && let Some(first) = out.first_mut() {
        *first = first.clone().style(theme.selected());
    }
    out
}

/// What the task's jobs spent on LLM calls: `$0.0123 · 12.3k tokens in, 456 out · 7 calls`.
pub fn spent(jobs: &[kodel_core::jobs::Job]) -> Option<String> {
    let sum = |field: &str| jobs.iter().map(|j| j.usage[field].as_i64().unwrap_or(0)).sum::<i64>();
    let calls = sum("llm_calls");
    if calls == 0 {
        return None;
    }
    let cost = sum("cost_micros") as f64 / 1_000_000.0;
    Some(format!(
        "{} · {} tokens in, {} out · {calls} LLM call{}",
        super::usage::dollars(cost),
        sum("input_tokens"),
        sum("output_tokens"),
        if calls == 1 { "" } else { "s" }
    ))
}
