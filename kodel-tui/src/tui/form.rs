//! The form that creates or edits a task (`n`, `e`): title, description (or `$EDITOR`),
//! priority, labels, assignee.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use kodel_core::api::{Priority, Task};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph};
use serde_json::json;

use super::app::{App, Effect};
use super::overlay::centered;
use super::ui::{Theme, wrap};

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

    pub(super) fn text_mut(&mut self) -> Option<&mut String> {
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

/// The form's keys.
pub const KEYS: &[(&str, &str)] = &[("Tab", "next field"), ("Ctrl-S", "save"), ("Enter", "save (newline in description)"), ("Ctrl-E", "$EDITOR"), ("←/→", "priority"), ("Esc", "cancel")];

impl App {
    pub(super) fn form_key(&mut self, f: &mut Form, k: KeyEvent) -> Vec<Effect> {
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

}

/// The form over the view.
pub(super) fn draw(f: &mut Frame, area: Rect, form: &Form, theme: Theme) {
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
