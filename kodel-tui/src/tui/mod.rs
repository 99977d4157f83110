//! `kodel` with no arguments: the board, a task with its agent working live, agents and
//! jobs, over the same API as the CLI. One event loop reads the terminal and the
//! network's messages and redraws only when something changed (idle = no work).
//!
//! - `app.rs`: the state, the keys all views share, messages (no I/O; unit-tested)
//! - a module per view, with its state, its keys (one `match`) and its drawing:
//!   `board.rs`, `detail.rs` (a task), `agents.rs`, `jobs.rs`; over them `form.rs`
//!   (a task's form) and `overlay.rs` (help, pickers, prompts, an artifact)
//! - `ui.rs`: the frame (header, view, footer) and the theme (snapshot-tested with
//!   ratatui's TestBackend)
//! - `net.rs`: requests and the event streams (crate::follow), in tasks
//! - `stream.rs`: a task's bounded agent stream

pub mod agents;
pub mod app;
pub mod board;
pub mod detail;
pub mod form;
pub mod jobs;
pub mod net;
pub mod overlay;
pub mod stream;
pub mod ui;
pub mod usage;

use std::io::Write;
use std::time::Instant;

use crossterm::event::{DisableBracketedPaste, DisableMouseCapture, EnableBracketedPaste, EnableMouseCapture, Event as TermEvent, EventStream, KeyEventKind, MouseEventKind};
use crossterm::execute;
use crossterm::terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode};
use futures::StreamExt;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use tokio::sync::mpsc;

use crate::commands::Ctx;
use crate::exit::{self, CliError};
use app::{App, Effect, Msg};
use net::Net;
use ui::Theme;

/// A panic's message while the TUI holds the screen: printed once the terminal is back
/// (printed on the alternate screen, it would vanish with it).
static PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

/// Puts the terminal back however the TUI ends (a panic included).
struct TermGuard {
    hook: Option<PanicHook>,
}

impl TermGuard {
    fn enter() -> std::io::Result<TermGuard> {
        enable_raw_mode()?;
        execute!(std::io::stdout(), EnterAlternateScreen, EnableMouseCapture, EnableBracketedPaste)?;
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|info| {
            let mut p = PANIC.lock().unwrap_or_else(|e| e.into_inner());
            p.get_or_insert_with(|| format!("{info}\n{}", std::backtrace::Backtrace::capture()));
        }));
        Ok(TermGuard { hook: Some(hook) })
    }
}

fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(std::io::stdout(), DisableBracketedPaste, DisableMouseCapture, LeaveAlternateScreen);
    let _ = std::io::stdout().flush();
}

impl Drop for TermGuard {
    fn drop(&mut self) {
        restore();
        if let Some(hook) = self.hook.take() {
            std::panic::set_hook(hook);
        }
        if let Some(msg) = PANIC.lock().unwrap_or_else(|e| e.into_inner()).take() {
            eprintln!("kodel: the TUI hit a bug: {msg}");
        }
    }
}

pub async fn run(ctx: &mut Ctx) -> Result<(), CliError> {
    run_with(ctx, None).await
}

/// The TUI with a first message in its footer (`kodel up` says which model AI jobs use).
/// How often the agents and jobs views are read again while shown.
const REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn run_with(ctx: &mut Ctx, welcome: Option<String>) -> Result<(), CliError> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(CliError::usage("the TUI needs a terminal").hint("use the commands for scripts: `kodel --help`"));
    }
    ctx.require_login()?;
    let started = Instant::now();
    // Where the TUI was last, unless an org is named for this start (--org, KODEL_ORG).
    let named = ctx.org.is_some() && (ctx.org != ctx.settings.org || std::env::var_os("KODEL_ORG").is_some());
    let last = ctx.settings.tui_org.clone().filter(|_| !named);
    let org = match last.clone().or_else(|| ctx.org.clone()) {
        Some(o) => o,
        None => {
            let page: kodel_core::api::Page<kodel_core::api::Org> = ctx.client.get("/api/v1/orgs").await?;
            page.data.first().map(|o| o.slug.clone()).ok_or_else(|| CliError::usage("you belong to no organization yet").hint("create one: kodel org create SLUG NAME"))?
        }
    };
    let last_project = last.as_ref().and(ctx.settings.tui_project.clone());
    let project = std::env::var("KODEL_PROJECT").ok().filter(|p| !p.is_empty()).or(last_project).or_else(|| ctx.settings.project.clone());
    // What a switch of org or project is saved into (the file's settings, not the env's).
    let mut settings = crate::config::Settings::load().unwrap_or_default();
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| CliError::new(exit::FAILURE, e.to_string()))?;
    let mut hangup = signal(SignalKind::hangup()).map_err(|e| CliError::new(exit::FAILURE, e.to_string()))?;
    let api = ctx.client.clone();
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    let mut net = Net::new(api, tx.clone(), org.clone());
    let mut app = App::new(org);
    app.user = ctx.client.credentials().and_then(|c| c.email.clone());
    app.status = welcome.map(|w| (w, false));
    let theme = Theme::from_env();
    // Benchmarks: exit once the first full board is on screen, writing how long it took
    // (ms) to the file this names.
    let exit_after_board = std::env::var_os("KODEL_TUI_EXIT_AFTER_FIRST_BOARD");

    let _guard = TermGuard::enter().map_err(|e| CliError::new(exit::FAILURE, format!("cannot set up the terminal: {e}")))?;
    let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout())).map_err(|e| CliError::new(exit::FAILURE, e.to_string()))?;
    let _ = terminal.clear();

    net.run(Effect::FollowOrg);
    match project {
        Some(key) => {
            let e = app.open_project(key);
            net.run(e);
        }
        None => net.run(Effect::LoadProjects),
    }
    net.run(Effect::LoadOrgs);
    let mut events = EventStream::new();
    let mut dirty = true;
    // The agents and jobs views have no stream of their own: they are read again.
    let mut refresh = tokio::time::interval(REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    refresh.reset();
    loop {
        if dirty {
            terminal.draw(|f| ui::draw(f, &app, theme)).map_err(|e| CliError::new(exit::FAILURE, e.to_string()))?;
            dirty = false;
            if let Some(path) = &exit_after_board
                && app.project.is_some()
                && !app.loading
            {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                drop(terminal);
                drop(_guard);
                let _ = std::fs::write(path, format!("{ms:.1}\n"));
                return Ok(());
            }
        }
        if app.quit {
            break;
        }
        let effects = tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(TermEvent::Key(k))) if k.kind != KeyEventKind::Release => { dirty = true; app.on_key(k) }
                // Only the wheel means something: plain mouse motion costs no redraw.
                Some(Ok(TermEvent::Mouse(m))) if matches!(m.kind, MouseEventKind::ScrollUp | MouseEventKind::ScrollDown) => { dirty = true; app.on_mouse(m) }
                Some(Ok(TermEvent::Paste(text))) => { dirty = true; app.on_paste(&text); vec![] }
                Some(Ok(TermEvent::Resize(..))) => { dirty = true; vec![] }
                Some(Ok(_)) => vec![],
                Some(Err(_)) | None => break,
            },
            _ = term.recv() => break,
            _ = hangup.recv() => break,
            _ = refresh.tick() => app.refresh(),
            Some(msg) = rx.recv() => {
                dirty = true;
                let mut effects = app.on_msg(msg);
                // Take whatever else is waiting before drawing again (a fast stream).
                while let Ok(more) = rx.try_recv() {
                    effects.extend(app.on_msg(more));
                }
                effects
            }
        };
        for effect in effects {
            match effect {
                Effect::Edit(text) => {
                    let edited = edit_in_editor(&text, &mut terminal);
                    dirty = true;
                    match edited {
                        Ok(t) => app.on_msg(Msg::Edited(t)),
                        Err(e) => app.on_msg(Msg::Failed(e)),
                    };
                }
                Effect::SaveSettings => {
                    // Remember the org and project for the TUI's next start; the
                    // CLI's defaults stay as they are (`kodel org use`, `project use`).
                    settings.tui_org = Some(app.org.clone());
                    settings.tui_project = app.project.as_ref().map(|p| p.key.clone());
                    let _ = settings.save();
                }
                Effect::FollowOrg => {
                    net.set_org(&app.org);
                    net.run(Effect::FollowOrg);
                }
                other => net.run(other),
            }
        }
    }
    Ok(())
}

/// Leaves the TUI for `$EDITOR` (or `vi`) on a temporary file, then comes back.
fn edit_in_editor(text: &str, terminal: &mut Terminal<CrosstermBackend<std::io::Stdout>>) -> Result<String, String> {
    // A private directory (0700, a random name): the draft is nobody else's to read.
    let dir = tempfile::Builder::new().prefix("kodel-edit-").tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("description.md");
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    restore();
    let editor = std::env::var("VISUAL").or_else(|_| std::env::var("EDITOR")).unwrap_or_else(|_| "vi".into());
    let status = std::process::Command::new("sh").arg("-c").arg(format!("{editor} \"$1\"")).arg("sh").arg(&path).status();
    let _ = enable_raw_mode();
    let _ = execute!(std::io::stdout(), EnterAlternateScreen, EnableMouseCapture, EnableBracketedPaste);
    let _ = terminal.clear();
    match status {
        Ok(s) if s.success() => std::fs::read_to_string(&path).map_err(|e| e.to_string()),
        Ok(s) => Err(format!("{editor} exited with {s}; the description is unchanged")),
        Err(e) => Err(format!("cannot run {editor}: {e}")),
    }
}
