//! Drawing: the header (org, project, view, connection), the view, the footer (its main
//! keys, or the last message), and overlays. Pure functions of the app's state; each
//! view draws itself in its module (board.rs, detail.rs, agents.rs, jobs.rs, and
//! overlay.rs and form.rs over them).

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::app::{App, Conn, View, keys};
use super::{agents, board, detail, jobs, overlay};

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
    /// Waiting on a person (a paused job: its budget is spent).
    pub fn warn(&self) -> Style {
        if self.color { self.fg(Color::Yellow) } else { Style::default().add_modifier(Modifier::BOLD) }
    }
    pub fn selected(&self) -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }
    pub fn title(&self) -> Style {
        Style::default().add_modifier(Modifier::BOLD)
    }
}

pub fn draw(f: &mut Frame, app: &App, theme: Theme) {
    // A message longer than a line takes up to three: what it says to do is at its end.
    let footer_lines = app.status.as_ref().map_or(1, |(text, _)| wrap(text, (f.area().width as usize).saturating_sub(2)).len().clamp(1, 3)) as u16;
    let [header, body, footer] = Layout::vertical([Constraint::Length(1), Constraint::Min(3), Constraint::Length(footer_lines)]).areas(f.area());
    draw_header(f, header, app, theme);
    match app.view {
        View::Board if app.board.list => board::draw_list(f, body, app, theme),
        View::Board => board::draw(f, body, app, theme),
        View::Task => detail::draw(f, body, app, theme),
        View::Agents => agents::draw(f, body, app, theme),
        View::Jobs => jobs::draw(f, body, app, theme),
        View::Usage => super::usage::draw(f, body, app, theme),
    }
    draw_footer(f, footer, app, theme);
    overlay::draw(f, body, app, theme);
}

fn draw_header(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let project = app.project.as_ref().map(|p| format!("{} {}", p.key, p.name)).unwrap_or_else(|| "no project".into());
    let view = match app.view {
        View::Board if app.board.list => "list",
        View::Board => "board",
        View::Task => "task",
        View::Agents => "agents",
        View::Jobs => "jobs",
        View::Usage => "usage",
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
    // Who you are, then the connection; a space always stands before them, however
    // narrow the terminal.
    let who = match &app.user {
        Some(user) if area.width >= 100 => format!(" {user} "),
        _ => String::new(),
    };
    let conn = format!(" {conn}");
    let width = who.chars().count() + conn.chars().count() + 1;
    let [l, r] = Layout::horizontal([Constraint::Min(10), Constraint::Length(width as u16)]).areas(area);
    f.render_widget(Paragraph::new(left), l);
    f.render_widget(Paragraph::new(Line::from(vec![Span::styled(who, theme.dim()), Span::styled(conn, style)])), r);
}

fn draw_footer(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    if let Some((text, error)) = &app.status {
        let style = if *error { theme.error() } else { theme.ok() };
        let lines: Vec<Line> = wrap(text, (area.width as usize).saturating_sub(2)).into_iter().map(|l| Line::styled(format!(" {l}"), style)).collect();
        f.render_widget(Paragraph::new(lines), area);
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

pub(super) fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `text` in lines of at most `width` characters, broken between words where it can
/// be (a word longer than a line is cut), keeping the text's own line breaks.
pub(super) fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(8);
    let mut out = Vec::new();
    for line in text.lines() {
        let mut current = String::new();
        let mut len = 0;
        // Words with the spaces before them, so indentation survives.
        for word in line.split_inclusive(' ') {
            let n = word.chars().count();
            if len + n > width && len > 0 {
                out.push(current.trim_end().to_owned());
                current.clear();
                len = 0;
            }
            if n > width {
                let chars: Vec<char> = word.chars().collect();
                let mut chunks = chars.chunks(width).peekable();
                while let Some(chunk) = chunks.next() {
                    if chunks.peek().is_some() {
                        out.push(chunk.iter().collect());
                    } else {
                        current = chunk.iter().collect();
                        len = chunk.len();
                    }
                }
                continue;
            }
            current.push_str(word);
            len += n;
        }
        out.push(current.trim_end().to_owned());
    }
    out
}
