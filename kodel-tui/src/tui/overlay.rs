//! What opens over a view: the keys (`?`), the move and project/org pickers, the
//! one-line prompts (filter, search, comment, approve/reject) and an artifact's content.
//! The task form is in `form.rs`.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, List, ListItem, ListState, Paragraph};
use uuid::Uuid;

use super::app::{App, Effect, View, keys};
use super::board::Board;
use super::form::Form;
use super::ui::{Theme, truncate, wrap};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Project,
    Org,
    /// A job template, to start a job on the open task (`s`).
    Template,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptFor {
    Filter,
    Search,
    Comment(String),
    Approve(Uuid),
    Reject(Uuid),
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

/// The keys of the move and project/org pickers.
pub const PICK_KEYS: &[(&str, &str)] = &[("j/k", "choose"), ("Enter", "pick"), ("Esc", "cancel")];
/// A prompt's keys.
pub const PROMPT_KEYS: &[(&str, &str)] = &[("Enter", "ok"), ("Esc", "cancel")];
/// The help's keys.
pub const HELP_KEYS: &[(&str, &str)] = &[("any key", "close")];
/// The artifact view's keys.
pub const ARTIFACT_KEYS: &[(&str, &str)] = &[("j/k", "scroll"), ("PgDn/PgUp", "page"), ("A/R", "approve/reject"), ("Esc", "close")];

impl App {
    pub(super) fn overlay_key(&mut self, k: KeyEvent) -> Vec<Effect> {
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
                    (Pick::Template, Some((template, _))) => match &self.detail {
                        Some(d) => vec![Effect::StartJob { key: d.key.clone(), template: template.clone() }],
                        None => vec![],
                    },
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

}

/// A box of this size in the middle of `area` (smaller if `area` is).
pub(super) fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h }
}

/// The overlay open, if any, over the view's area.
pub(super) fn draw(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    match &app.overlay {
        Overlay::None => {}
        Overlay::Help => {
            // The view's keys, then those every view has that it does not list itself
            // (each key once).
            let mut all: Vec<(&str, &str)> = keys(app.view, &Overlay::None).to_vec();
            let board = app.view == View::Board;
            for extra in [("a", "agents"), ("J", "jobs"), ("U", "usage and cost"), ("b", "back to the board"), ("q", "quit"), ("Ctrl-C", "quit"), ("wheel", "scroll")] {
                let listed = all.iter().any(|(k, _)| k.split('/').any(|k| k == extra.0));
                let pointless = board && extra.0 == "b";
                if !listed && !pointless {
                    all.push(extra);
                }
            }
            // Two columns when one does not fit (80x24).
            let rows = area.height.saturating_sub(2) as usize;
            let cols = if all.len() > rows { 2 } else { 1 };
            let per = all.len().div_ceil(cols);
            let line = |(k, what): &(&str, &str)| Line::from(vec![Span::styled(format!("{k:>9} "), theme.hint()), Span::raw(truncate(what, 27))]);
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
            let patch = a.kind.as_str() == "patch";
            let text = if patch { text } else { markdown_marks(&text) };
            let mut bold = false;
            let body: Vec<Line> = wrap(&text, width)
                .into_iter()
                .map(|l| {
                    // A diff reads better with its additions and removals marked.
                    if patch {
                        let style = if l.starts_with('+') && !l.starts_with("+++") {
                            theme.ok()
                        } else if l.starts_with('-') && !l.starts_with("---") {
                            theme.error()
                        } else {
                            Style::default()
                        };
                        return Line::styled(l, style);
                    }
                    // Reviews and reports are markdown: headings and **bold** shown as
                    // such, not as marks (bold may go on over a wrapped line).
                    if let Some(heading) = l.strip_prefix(HEADING) {
                        return Line::styled(heading.to_owned(), theme.title());
                    }
                    let mut spans = Vec::new();
                    for (i, piece) in l.split("**").enumerate() {
                        if i > 0 {
                            bold = !bold;
                        }
                        let style = if bold { Style::default().add_modifier(ratatui::style::Modifier::BOLD) } else { Style::default() };
                        spans.push(Span::styled(piece.to_owned(), style));
                    }
                    Line::from(spans)
                })
                .skip(*scroll)
                .take(r.height.saturating_sub(2) as usize)
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
                Pick::Template => " start a job (Enter) ",
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
        Overlay::Form(form) => super::form::draw(f, area, form, theme),
    }
}

/// Marks a heading line in `markdown_marks`' output (a character no text uses).
const HEADING: &str = "\u{1}";

/// Markdown's line marks turned into what the artifact view shows: `# Title` becomes a
/// heading (marked with `HEADING` for the drawing), `- item` and `* item` become `• item`.
fn markdown_marks(text: &str) -> String {
    text.lines()
        .map(|l| {
            let trimmed = l.trim_start();
            let indent = &l[..l.len() - trimmed.len()];
            if let Some(rest) = trimmed.strip_prefix('#') {
                format!("{HEADING}{}", rest.trim_start_matches('#').trim())
            } else if let Some(rest) = trimmed.strip_prefix("- ").or_else(|| trimmed.strip_prefix("* ")) {
                format!("{indent}• {rest}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
