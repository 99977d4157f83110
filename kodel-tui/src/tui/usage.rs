//! The org's LLM usage (`U`): cost by day over the last 30 days and by model, as bar
//! charts, with the totals; `t` switches the bars between cost and tokens.

use crossterm::event::{KeyCode, KeyEvent};
use kodel_core::usage::{UsageReport, UsageRow};
use ratatui::Frame;
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::Line;
use ratatui::widgets::{Bar, BarChart, BarGroup, Block, Borders, Paragraph};

use super::app::{App, Effect, View};
use super::ui::Theme;

/// The usage view's keys.
pub const KEYS: &[(&str, &str)] = &[("t", "cost/tokens"), ("r", "reload"), ("b/Esc", "board"), ("q", "quit"), ("?", "keys")];

/// The last report by day and by model.
#[derive(Debug, Default)]
pub struct Usage {
    pub by_day: Option<UsageReport>,
    pub by_model: Option<UsageReport>,
    /// Bars show tokens (in and out) rather than dollars.
    pub tokens: bool,
}

impl App {
    pub(super) fn usage_key(&mut self, k: KeyEvent) -> Vec<Effect> {
        self.status = None;
        match k.code {
            KeyCode::Esc => self.view = View::Board,
            KeyCode::Char('r') => return vec![Effect::LoadUsage],
            KeyCode::Char('t') => self.usage.tokens = !self.usage.tokens,
            _ => {}
        }
        vec![]
    }
}

/// Dollars with as many decimals as small sums need: `$12.40`, `$0.0123`.
pub fn dollars(cost: f64) -> String {
    if cost >= 1.0 { format!("${cost:.2}") } else { format!("${cost:.4}") }
}

/// A bar's height: micro-dollars or tokens (bars take whole numbers).
fn value(r: &UsageRow, tokens: bool) -> u64 {
    if tokens { r.tokens_in + r.tokens_out } else { (r.cost * 1_000_000.0).round().max(0.0) as u64 }
}

fn label(r: &UsageRow, tokens: bool) -> String {
    if tokens { compact(r.tokens_in + r.tokens_out) } else { short_dollars(r.cost) }
}

/// Dollars in at most 6 characters, for a bar: `$1.37`, `$0.42`, `<$0.01`, `$128`.
fn short_dollars(cost: f64) -> String {
    match cost {
        c if c <= 0.0 => "$0".into(),
        c if c < 0.01 => "<$0.01".into(),
        c if c < 100.0 => format!("${c:.2}"),
        c => format!("${c:.0}"),
    }
}

/// `12.3k`, `4.5M`.
fn compact(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

pub(super) fn draw(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let u = &app.usage;
    let (Some(by_day), Some(by_model)) = (&u.by_day, &u.by_model) else {
        f.render_widget(Paragraph::new(Line::styled(" reading the org's usage…", theme.dim())), area);
        return;
    };
    let what = if u.tokens { "tokens" } else { "cost" };
    let calls: u64 = by_day.data.iter().map(|r| r.calls).sum();
    let cost: f64 = by_day.data.iter().map(|r| r.cost).sum();
    let tokens: u64 = by_day.data.iter().map(|r| r.tokens_in + r.tokens_out).sum();
    let unpriced: u64 = by_day.data.iter().map(|r| r.unpriced_calls).sum();
    let mut total = format!(
        " {} to {} · {calls} calls · {} tokens · {}{}",
        by_day.from.format("%Y-%m-%d"),
        by_day.to.format("%Y-%m-%d"),
        compact(tokens),
        dollars(cost),
        match unpriced {
            0 => String::new(),
            1 => " + 1 call with no price".into(),
            n => format!(" + {n} calls with no price"),
        },
    );
    if calls == 0 {
        total = format!(" no LLM calls from {} to {}", by_day.from.format("%Y-%m-%d"), by_day.to.format("%Y-%m-%d"));
    }
    let [head, days, models] = Layout::vertical([Constraint::Length(1), Constraint::Percentage(55), Constraint::Fill(1)]).areas(area);
    f.render_widget(Paragraph::new(Line::styled(total, theme.title())), head);

    // By day: the newest that fit, oldest on the left, the day of the month under each.
    let width = 7u16;
    let fit = (days.width.saturating_sub(2) / (width + 1)).max(1) as usize;
    let rows: Vec<&UsageRow> = by_day.data.iter().rev().take(fit).rev().collect();
    let bars: Vec<Bar> = rows
        .iter()
        .map(|r| {
            let day = r.key.as_deref().and_then(|k| k.get(5..)).unwrap_or("?").to_owned();
            Bar::default().value(value(r, u.tokens)).text_value(label(r, u.tokens)).label(Line::from(day)).style(theme.hint())
        })
        .collect();
    let chart = BarChart::default()
        .block(Block::default().borders(Borders::ALL).title(format!(" {what} by day (UTC, MM-DD), from {} ", by_day.source)))
        .data(BarGroup::default().bars(&bars))
        .bar_width(width)
        .bar_gap(1)
        .value_style(Style::default())
        .label_style(theme.dim());
    f.render_widget(chart, days);

    // By model: the most expensive first, as horizontal bars.
    let mut rows: Vec<&UsageRow> = by_model.data.iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(value(r, u.tokens)));
    let fit = models.height.saturating_sub(2) as usize;
    let bars: Vec<Bar> = rows
        .iter()
        .take(fit)
        .map(|r| {
            let name = r.key.clone().unwrap_or_else(|| "(none)".into());
            let note = if r.unpriced_calls > 0 && !u.tokens { " (no price)" } else { "" };
            Bar::default().value(value(r, u.tokens)).text_value(format!("{}{note}", label(r, u.tokens))).label(Line::from(name)).style(theme.agent())
        })
        .collect();
    let chart = BarChart::default()
        .block(Block::default().borders(Borders::ALL).title(format!(" {what} by model ")))
        .direction(Direction::Horizontal)
        .data(BarGroup::default().bars(&bars))
        .bar_width(1)
        .bar_gap(0)
        .label_style(theme.dim());
    f.render_widget(chart, models);
}
