//! The agents (`a`): each agent, whether it is online or busy and with which task.

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::Span;
use ratatui::widgets::{Block, Borders, Cell, Row, Table, TableState};

use super::app::{App, Effect, View};
use super::ui::Theme;

/// The agents view's keys.
pub const KEYS: &[(&str, &str)] = &[("j/k", "select"), ("Tab", "jobs"), ("r", "reload"), ("b/Esc", "board"), ("q", "quit"), ("?", "keys")];

impl App {
    pub(super) fn agents_key(&mut self, k: KeyEvent) -> Vec<Effect> {
        self.status = None;
        if super::app::move_in_list(&mut self.agents_sel, self.agents.len(), k.code) {
            return vec![];
        }
        match k.code {
            KeyCode::Esc => self.view = View::Board,
            KeyCode::Char('r') => return vec![Effect::LoadAgents],
            KeyCode::Tab => {
                self.view = View::Jobs;
                return vec![Effect::LoadJobs];
            }
            _ => {}
        }
        vec![]
    }
}

/// The agents' table.
pub(super) fn draw(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
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
