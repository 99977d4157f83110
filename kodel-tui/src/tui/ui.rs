//! Drawing: the header (org, project, view, connection), the view, the footer (its main
//! keys, or the last message), and overlays. Pure functions of the app's state.

use kodel_core::api::Task;
use kodel_core::jobs::{ArtifactState, JobState};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Borders, Cell, Clear, List, ListItem, ListState, Paragraph, Row, Table, TableState, Wrap};

use super::app::{App, Conn, FIELDS, Field, Overlay, Pick, PromptFor, View, keys, matches};
use super::stream::Entry;

/// Colours, or none at all (`NO_COLOR`): then emphasis is bold, dim and reverse only.
#[derive(Debug, Clone, Copy)]
pub struct Theme {
    pub color: bool,
}

impl Theme {
    pub fn from_env() -> Theme {
        Theme { color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) }
    }

    fn fg(&self, c: Color) -> Style {
        if self.color { Style::default().fg(c) } else { Style::default() }
    }

    pub fn dim(&self) -> Style {
        Style::default().add_modifier(Modifier::DIM)
    }
    pub fn hint(&self) -> Style {
        self.fg(Color::Cyan)
    }
    pub fn ok(&self) -> Style {
        self.fg(Color::Green)
    }
    pub fn error(&self) -> Style {
        if self.color { self.fg(Color::Red) } else { Style::default().add_modifier(Modifier::BOLD) }
    }
    pub fn agent(&self) -> Style {
        self.fg(Color::Magenta)
    }
    pub fn selected(&self) -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }
    pub fn title(&self) -> Style {
        Style::default().add_modifier(Modifier::BOLD)
    }
}

pub fn draw(f: &mut Frame, app: &App, theme: Theme) {
    let [header, body, footer] = Layout::vertical([Constraint::Length(1), Constraint::Min(3), Constraint::Length(1)]).areas(f.area());
    draw_header(f, header, app, theme);
    match app.view {
        View::Board if app.board.list => draw_list(f, body, app, theme),
        View::Board => draw_board(f, body, app, theme),
        View::Task => draw_task(f, body, app, theme),
        View::Agents => draw_agents(f, body, app, theme),
        View::Jobs => draw_jobs(f, body, app, theme),
    }
    draw_footer(f, footer, app, theme);
    draw_overlay(f, body, app, theme);
}

fn draw_header(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let project = app.project.as_ref().map(|p| format!("{} {}", p.key, p.name)).unwrap_or_else(|| "no project".into());
    let view = match app.view {
        View::Board if app.board.list => "list",
        View::Board => "board",
        View::Task => "task",
        View::Agents => "agents",
        View::Jobs => "jobs",
    };
    let (conn, style) = match &app.conn {
        Conn::Live => ("● live".to_owned(), theme.ok()),
        Conn::Connecting => ("○ connecting".to_owned(), theme.dim()),
        Conn::Retrying { attempt, error } => {
            let why = truncate(error, (area.width as usize / 3).max(10));
            (format!("○ reconnecting ({attempt}): {why}"), theme.error())
        }
    };
    let left = Line::from(vec![Span::styled(" kodel ", theme.title()), Span::raw(format!("{} / {project} ", app.org)), Span::styled(format!("[{view}]"), theme.dim())]);
    let [l, r] = Layout::horizontal([Constraint::Min(10), Constraint::Length(conn.chars().count() as u16 + 1)]).areas(area);
    f.render_widget(Paragraph::new(left), l);
    f.render_widget(Paragraph::new(Span::styled(conn, style)), r);
}

fn draw_footer(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    if let Some((text, error)) = &app.status {
        let style = if *error { theme.error() } else { theme.ok() };
        f.render_widget(Paragraph::new(Span::styled(format!(" {text}"), style)), area);
        return;
    }
    let mut spans = vec![Span::raw(" ")];
    let mut width = 1;
    for (k, what) in keys(app.view, &app.overlay) {
        let piece = k.chars().count() + what.chars().count() + 3;
        if width + piece > area.width as usize {
            break;
        }
        width += piece;
        spans.push(Span::styled(*k, theme.hint()));
        spans.push(Span::styled(format!(" {what}  "), theme.dim()));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
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

fn draw_board(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let cols = app.columns();
    if cols.is_empty() {
        let text = if app.loading { "loading..." } else { "No project yet: create one with `kodel project create KEY NAME`, then press p." };
        f.render_widget(Paragraph::new(text).style(theme.dim()), area);
        return;
    }
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
        f.render_stateful_widget(List::new(items).block(block).highlight_style(theme.selected()), *a, &mut state);
    }
}

fn draw_list(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
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

fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(8);
    let mut out = Vec::new();
    for line in text.lines() {
        let chars: Vec<char> = line.chars().collect();
        if chars.is_empty() {
            out.push(String::new());
        }
        for chunk in chars.chunks(width) {
            out.push(chunk.iter().collect());
        }
    }
    out
}

fn draw_task(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
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
        for j in d.jobs.iter().take(5) {
            let style = match j.status {
                JobState::Failed => theme.error(),
                JobState::Succeeded => theme.ok(),
                JobState::Running | JobState::Pending => theme.agent(),
                JobState::Cancelled => theme.dim(),
            };
            let mut text = format!("{} {}", j.kind.as_str(), j.status.as_str());
            if let Some(e) = &j.error {
                text.push_str(&format!(": {}", e.lines().next().unwrap_or_default()));
            }
            lines.push(Line::styled(truncate(&text, width), style));
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

fn draw_agents(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let rows: Vec<Row> = app
        .agents
        .iter()
        .map(|a| {
            let status = match a.status.as_str() {
                "busy" => Span::styled("busy", theme.agent()),
                "online" => Span::styled("online", theme.ok()),
                s => Span::styled(s.to_owned(), theme.dim()),
            };
            let job = if a.status == "busy" { a.current_task.clone().unwrap_or_default() } else { String::new() };
            let disk = a.disk_bytes.map(|b| format!("{:.1} MiB", b as f64 / 1_048_576.0)).unwrap_or_default();
            let seen = a.last_seen_at.map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_default();
            Row::new(vec![Cell::from(a.name.clone()), Cell::from(status), Cell::from(a.labels.join(",")), Cell::from(job), Cell::from(disk), Cell::from(seen)])
        })
        .collect();
    let widths = [Constraint::Fill(2), Constraint::Length(8), Constraint::Fill(2), Constraint::Length(10), Constraint::Length(10), Constraint::Length(16)];
    let mut state = TableState::default();
    if !app.agents.is_empty() {
        state.select(Some(app.agents_sel));
    }
    let title = if app.agents.is_empty() { " agents: none yet (kodel agent token create NAME, then run kodel-agent) ".to_owned() } else { format!(" agents ({}) ", app.agents.len()) };
    let table = Table::new(rows, widths)
        .header(Row::new(["NAME", "STATUS", "LABELS", "JOB", "DISK", "LAST SEEN"]).style(theme.dim()))
        .row_highlight_style(theme.selected())
        .block(Block::default().borders(Borders::ALL).title(title));
    f.render_stateful_widget(table, area, &mut state);
}

fn draw_jobs(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let rows: Vec<Row> = app
        .jobs
        .iter()
        .map(|j| {
            let style = match j.status {
                JobState::Failed => theme.error(),
                JobState::Succeeded => theme.ok(),
                JobState::Running | JobState::Pending => theme.agent(),
                JobState::Cancelled => theme.dim(),
            };
            let note = j.error.clone().or(j.summary.clone()).unwrap_or_default();
            Row::new(vec![
                Cell::from(Span::styled(j.task.clone(), theme.hint())),
                Cell::from(j.kind.as_str()),
                Cell::from(Span::styled(j.status.as_str(), style)),
                Cell::from(j.attempts.to_string()),
                Cell::from(j.created_at.format("%m-%d %H:%M").to_string()),
                Cell::from(note.lines().next().unwrap_or_default().to_owned()),
            ])
        })
        .collect();
    let widths = [Constraint::Length(10), Constraint::Length(10), Constraint::Length(10), Constraint::Length(3), Constraint::Length(11), Constraint::Fill(1)];
    let mut state = TableState::default();
    if !app.jobs.is_empty() {
        state.select(Some(app.jobs_sel));
    }
    let table = Table::new(rows, widths)
        .header(Row::new(["TASK", "KIND", "STATUS", "#", "CREATED", "SUMMARY / ERROR"]).style(theme.dim()))
        .row_highlight_style(theme.selected())
        .block(Block::default().borders(Borders::ALL).title(format!(" jobs ({}) ", app.jobs.len())));
    f.render_stateful_widget(table, area, &mut state);
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h }
}

fn draw_overlay(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    match &app.overlay {
        Overlay::None => {}
        Overlay::Help => {
            let mut all: Vec<(&str, &str)> = keys(app.view, &Overlay::None).to_vec();
            all.extend([("a / J", "agents / jobs"), ("b", "back to the board"), ("Ctrl-C", "quit from anywhere"), ("wheel", "scroll")]);
            // Two columns when one does not fit (80x24).
            let rows = area.height.saturating_sub(2) as usize;
            let cols = if all.len() > rows { 2 } else { 1 };
            let per = all.len().div_ceil(cols);
            let line = |(k, what): &(&str, &str)| Line::from(vec![Span::styled(format!("{k:>9} "), theme.hint()), Span::raw(truncate(what, 26))]);
            let r = centered(area, if cols == 2 { 78 } else { 48 }, per as u16 + 2);
            f.render_widget(Clear, r);
            let block = Block::default().borders(Borders::ALL).title(" keys (any key closes) ");
            let inner = block.inner(r);
            f.render_widget(block, r);
            let halves = Layout::horizontal(vec![Constraint::Fill(1); cols]).split(inner);
            for (c, half) in halves.iter().enumerate() {
                let lines: Vec<Line> = all.iter().skip(c * per).take(per).map(line).collect();
                f.render_widget(Paragraph::new(lines), *half);
            }
        }
        Overlay::Artifact { scroll } => {
            let Some(a) = app.detail.as_ref().and_then(|d| d.artifacts.get(d.art)) else { return };
            let r = Rect { x: area.x + 1, y: area.y, width: area.width.saturating_sub(2), height: area.height };
            f.render_widget(Clear, r);
            let width = r.width.saturating_sub(2) as usize;
            let mut text = String::new();
            if let Some(reference) = &a.reference {
                text.push_str(&format!("{reference}\n\n"));
            }
            text.push_str(a.content.as_deref().unwrap_or("(no content: the reference above is the artifact)"));
            let body: Vec<Line> = wrap(&text, width)
                .into_iter()
                .skip(*scroll)
                .take(r.height.saturating_sub(2) as usize)
                .map(|l| {
                    // A diff reads better with its additions and removals marked.
                    let style = if a.kind.as_str() == "patch" && l.starts_with('+') && !l.starts_with("+++") {
                        theme.ok()
                    } else if a.kind.as_str() == "patch" && l.starts_with('-') && !l.starts_with("---") {
                        theme.error()
                    } else {
                        Style::default()
                    };
                    Line::styled(l, style)
                })
                .collect();
            let title = format!(" {} {}: {} ", a.status.as_str(), a.kind.as_str(), truncate(&a.title, width.saturating_sub(30)));
            f.render_widget(Paragraph::new(body).block(Block::default().borders(Borders::ALL).title(title)), r);
        }
        Overlay::Move { key, options, sel } => {
            let items: Vec<ListItem> = options.iter().map(|o| ListItem::new(o.clone())).collect();
            let r = centered(area, 36, options.len() as u16 + 2);
            let mut state = ListState::default().with_selected(Some(*sel));
            f.render_widget(Clear, r);
            f.render_stateful_widget(List::new(items).block(Block::default().borders(Borders::ALL).title(format!(" move {key} to "))).highlight_style(theme.selected()), r, &mut state);
        }
        Overlay::Pick { what, items, sel } => {
            let title = match what {
                Pick::Project => " project ",
                Pick::Org => " organization ",
            };
            let list: Vec<ListItem> = if items.is_empty() { vec![ListItem::new(Span::styled("loading...", theme.dim()))] } else { items.iter().map(|(k, n)| ListItem::new(format!("{k}  {n}"))).collect() };
            let r = centered(area, 48, list.len().min(20) as u16 + 2);
            let mut state = ListState::default().with_selected((!items.is_empty()).then_some(*sel));
            f.render_widget(Clear, r);
            f.render_stateful_widget(List::new(list).block(Block::default().borders(Borders::ALL).title(title)).highlight_style(theme.selected()), r, &mut state);
        }
        Overlay::Prompt { purpose, input } => {
            let title = match purpose {
                PromptFor::Filter => " filter: words, #label, @assignee ".to_owned(),
                PromptFor::Search => " search the stream ".to_owned(),
                PromptFor::Comment(key) => format!(" comment on {key} "),
                PromptFor::Approve(_) => " approve: a comment (optional) ".to_owned(),
                PromptFor::Reject(_) => " reject: why? ".to_owned(),
            };
            let r = centered(area, 64, 3);
            f.render_widget(Clear, r);
            let room = r.width.saturating_sub(3) as usize;
            let shown: String = {
                let n = input.chars().count();
                input.chars().skip(n.saturating_sub(room)).collect()
            };
            f.render_widget(Paragraph::new(format!("{shown}▏")).block(Block::default().borders(Borders::ALL).title(title)), r);
        }
        Overlay::Form(form) => {
            let r = centered(area, 72, 18);
            f.render_widget(Clear, r);
            let title = match &form.editing {
                Some((key, _)) => format!(" edit {key} "),
                None => " new task ".to_owned(),
            };
            let block = Block::default().borders(Borders::ALL).title(title);
            let inner = block.inner(r);
            f.render_widget(block, r);
            let rows = Layout::vertical([Constraint::Length(2), Constraint::Min(3), Constraint::Length(2), Constraint::Length(2), Constraint::Length(2), Constraint::Length(1)]).split(inner);
            for (i, field) in FIELDS.iter().enumerate() {
                let active = i == form.field;
                let (label, value) = match field {
                    Field::Title => ("Title", form.title.clone()),
                    Field::Description => ("Description (Ctrl-E: $EDITOR)", form.description.clone()),
                    Field::Priority => ("Priority (←/→)", form.priority.as_str().to_owned()),
                    Field::Labels => ("Labels (comma-separated)", form.labels.clone()),
                    Field::Assignee => ("Assignee (email)", form.assignee.clone()),
                };
                let cursor = if active && *field != Field::Priority { "▏" } else { "" };
                let label_style = if active { theme.hint() } else { theme.dim() };
                let mut lines = vec![Line::styled(label, label_style)];
                if *field == Field::Description {
                    let w = rows[i].width as usize;
                    let wrapped = wrap(&format!("{value}{cursor}"), w);
                    let keep = (rows[i].height as usize).saturating_sub(1);
                    let skip = wrapped.len().saturating_sub(keep);
                    lines.extend(wrapped.into_iter().skip(skip).map(Line::raw));
                } else {
                    lines.push(Line::raw(format!("{value}{cursor}")));
                }
                f.render_widget(Paragraph::new(lines), rows[i]);
            }
            if let Some(e) = &form.error {
                f.render_widget(Paragraph::new(Span::styled(e.clone(), theme.error())), rows[5]);
            } else {
                f.render_widget(Paragraph::new(Span::styled("Ctrl-S save · Esc cancel", theme.dim())), rows[5]);
            }
        }
    }
}
