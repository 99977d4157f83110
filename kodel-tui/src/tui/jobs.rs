//! The org's jobs (`J`): the newest first, with their state and why one failed (the
//! selected job's whole summary or error below the table); `Enter` opens a job's task.

use crossterm::event::{KeyCode, KeyEvent};
use kodel_core::jobs::JobState;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState};

use super::app::{App, Effect, View};
use super::ui::{Theme, wrap};

/// The jobs view's keys.
pub const KEYS: &[(&str, &str)] = &[("j/k", "select"), ("Enter", "open task"), ("Tab", "agents"), ("r", "reload"), ("b/Esc", "board"), ("q", "quit"), ("?", "keys")];

impl App {
    pub(super) fn jobs_key(&mut self, k: KeyEvent) -> Vec<Effect> {
        self.status = None;
        if super::app::move_in_list(&mut self.jobs_sel, self.jobs.len(), k.code) {
            return vec![];
        }
        match k.code {
            KeyCode::Esc => self.view = View::Board,
            KeyCode::Char('r') => return vec![Effect::LoadJobs],
            KeyCode::Tab => {
                self.view = View::Agents;
                return vec![Effect::LoadAgents];
            }
            KeyCode::Enter => {
                if let Some(j) = self.jobs.get(self.jobs_sel) {
                    let key = j.task.clone();
                    return self.open_task(key);
                }
            }
            _ => {}
        }
        vec![]
    }
}

/// The jobs' table, and the selected job's note whole (an error's hint comes after
/// its first line more often than not).
pub(super) fn draw(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let selected = app.jobs.get(app.jobs_sel);
    let note = selected.and_then(|j| j.error.clone().or(j.summary.clone())).filter(|n| !n.trim().is_empty());
    let area = match &note {
        Some(note) if area.height >= 10 => {
            let lines = wrap(note.trim(), area.width.saturating_sub(2) as usize);
            let height = (lines.len() as u16 + 2).min(area.height / 2);
            let [table, below] = Layout::vertical([Constraint::Fill(1), Constraint::Length(height)]).areas(area);
            let failed = selected.is_some_and(|j| j.status == JobState::Failed);
            let text: Vec<Line> = lines.into_iter().map(|l| Line::styled(l, if failed { theme.error() } else { theme.dim() })).collect();
            let title = selected.map(|j| format!(" {} {} of {} ", j.kind.as_str(), j.status.as_str(), j.task)).unwrap_or_default();
            f.render_widget(Paragraph::new(text).block(Block::default().borders(Borders::ALL).title(title)), below);
            table
        }
        _ => area,
    };
    let rows: Vec<Row> = app
        .jobs
        .iter()
        .map(|j| {
            let style = match j.status {
                JobState::Failed => theme.error(),
                JobState::Succeeded => theme.ok(),
                JobState::Running | JobState::Pending => theme.agent(),
                JobState::Paused => theme.warn(),
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
