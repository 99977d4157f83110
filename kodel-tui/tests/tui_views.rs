//! The TUI's views drawn with ratatui's TestBackend against fixed data and compared with
//! snapshots (tests/snapshots/, reviewed by eye when they change), and what keys do in
//! each view.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use kodel_tui::tui::app::{App, Conn, Effect, Msg, Overlay, PromptFor, View};
use kodel_tui::tui::ui::{Theme, draw};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde_json::{Value, json};

const AT: &str = "2026-11-28T10:00:00Z";

/// The job whose steps the detail view shows.
const JOB: &str = "0193a4c0-0000-7000-8000-00000000000a";

fn project() -> Value {
    let st = |name: &str, pos: i32, cat: &str, next: &[&str], binding: Option<&str>| {
        let mut v = json!({"name": name, "category": cat, "position": pos, "next": next});
        if let Some(b) = binding {
            v["binding"] = json!({"template": b});
        }
        v
    };
    json!({
        "id": "00000000-0000-0000-0000-000000000001", "key": "KOD", "name": "Kodel", "description": "",
        "workflow": {"id": "00000000-0000-0000-0000-000000000002", "name": "Software Development", "template": "software-development",
            "statuses": [
                st("Backlog", 0, "backlog", &["Ready"], None),
                st("Ready", 1, "unstarted", &["In Progress", "Backlog"], None),
                st("In Progress", 2, "started", &["Code Review", "Ready"], Some("implement-template")),
                st("Code Review", 3, "review", &["QA", "In Progress"], Some("code-review-template")),
                st("QA", 4, "review", &["Staging", "In Progress"], Some("qa-template")),
                st("Staging", 5, "review", &["Done"], None),
                st("Done", 6, "done", &[], None),
            ]},
        "instance_template": null, "role": "admin", "created_at": AT, "updated_at": AT
    })
}

fn task(n: i32, title: &str, status: &str, labels: &[&str], assignee: Option<&str>) -> Value {
    json!({"key": format!("KOD-{n}"), "project": "KOD", "number": n, "title": title, "description": "Users lose their session when the token expires.\nRefresh it in the background.",
           "status": status, "priority": if n == 2 { "high" } else { "none" }, "labels": labels, "assignee": assignee, "version": 1,
           "archived": false, "created_by": "ada@example.com", "created_at": AT, "updated_at": AT})
}

fn app() -> App {
    let mut app = App::new("acme".into());
    let tasks: Vec<Value> = vec![
        task(1, "Add a login page", "Backlog", &["web"], None),
        task(2, "Fix the crash on start when the config file is missing", "Ready", &["bug"], Some("ada@example.com")),
        task(3, "Refresh tokens in the background", "In Progress", &[], Some("bob@example.com")),
        task(4, "Document the API", "Backlog", &["docs"], None),
        task(5, "Dark mode", "QA", &[], None),
    ];
    let running = vec![job("KOD-3", "implement", "running", None)];
    app.on_msg(Msg::Board {
        org: "acme".into(),
        project: serde_json::from_value(project()).unwrap(),
        tasks: tasks.into_iter().map(|t| serde_json::from_value(t).unwrap()).collect(),
        running: running.into_iter().map(|j| serde_json::from_value(j).unwrap()).collect(),
    });
    app.on_msg(Msg::Conn(Conn::Live));
    app
}

fn job(task: &str, kind: &str, status: &str, error: Option<&str>) -> Value {
    json!({"id": "01a2204f-0000-7000-8000-000000000001", "task": task, "kind": kind, "template": format!("{kind}-template"), "status": status,
           "for_status": null, "attempts": 1, "max_attempts": 3, "agent": null, "lease_expires_at": null, "error": error, "summary": null,
           "usage": {}, "created_at": AT, "started_at": null, "finished_at": null})
}

fn event(id: i64, kind: &str, payload: Value) -> Value {
    json!({"id": id, "type": kind, "task": "KOD-3", "seq": id, "actor": null, "payload": payload, "created_at": AT})
}

fn render(app: &App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| draw(f, app, Theme { color: false })).unwrap();
    t.backend().to_string()
}

fn key(app: &mut App, code: KeyCode) -> Vec<Effect> {
    app.on_key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn chars(app: &mut App, text: &str) {
    for c in text.chars() {
        key(app, KeyCode::Char(c));
    }
}

/// The task view on KOD-3 with an agent at work: events, the model's words, a finished
/// tool call (opened), a failed one, and live output.
fn task_app() -> App {
    let mut app = app();
    key(&mut app, KeyCode::Right);
    key(&mut app, KeyCode::Right);
    assert_eq!(key(&mut app, KeyCode::Enter), vec![Effect::OpenTask("KOD-3".into())]);
    app.on_msg(Msg::Detail {
        key: "KOD-3".into(),
        task: serde_json::from_value(task(3, "Refresh tokens in the background", "In Progress", &[], Some("bob@example.com"))).unwrap(),
        comments: vec![serde_json::from_value(json!({"id": "01a2204f-0000-7000-8000-000000000009", "task": "KOD-3", "author": "ada@example.com", "body": "Keep the old token valid for a minute.", "created_at": AT})).unwrap()],
        jobs: vec![serde_json::from_value(job("KOD-3", "implement", "running", None)).unwrap()],
        artifacts: vec![serde_json::from_value(json!({"id": "01a2204f-0000-7000-8000-000000000007", "job": "01a2204f-0000-7000-8000-000000000001", "task": "KOD-3", "kind": "patch",
            "title": "app: 1 file changed, 3 insertions(+)", "content": "diff --git a/src/auth.rs b/src/auth.rs\n--- a/src/auth.rs\n+++ b/src/auth.rs\n@@ -10,3 +10,6 @@\n fn refresh_token() {\n-    todo!()\n+    let tok = current();\n+    renew(tok);\n }\n", "reference": "kodel/KOD-3-refresh", "status": "pending", "decided_by": null, "decided_at": null, "comment": null, "created_at": AT})).unwrap()],
    });
    let events = vec![
        event(1, "task.moved", json!({"from": "Ready", "to": "In Progress"})),
        event(2, "job.started", json!({"job_id": "01a2204f-0000-7000-8000-000000000001", "kind": "implement", "agent": "01a2aaaa-0000-7000-8000-000000000002", "attempt": 1})),
        event(3, "job.step", json!({"job_id": JOB, "seq": 0, "step": {"kind": "message", "text": "I'll look at how tokens are refreshed."}})),
        event(4, "job.step", json!({"job_id": JOB, "seq": 1, "step": {"kind": "tool", "call_id": "c", "tool": "grep", "input": {"pattern": "refresh_token"}, "output": "src/auth.rs:12:fn refresh_token()\nsrc/auth.rs:40:    refresh_token()", "error": false, "duration_ms": 4}})),
        event(5, "job.step", json!({"job_id": JOB, "seq": 2, "step": {"kind": "tool", "call_id": "c", "tool": "bash", "input": {"command": "cargo test auth"}, "output": "error[E0425]: cannot find value `tok`\nexit code: 101", "error": true, "duration_ms": 5120}})),
        event(6, "job.llm_call", json!({"provider": "openai", "model": "openai/gpt-4.1-mini", "status": "error", "input_tokens": 0, "output_tokens": 0, "error": "the provider cannot be reached: set OPENAI_API_KEY"})),
    ];
    app.on_msg(Msg::History { key: "KOD-3".into(), events: events.into_iter().map(|e| serde_json::from_value(e).unwrap()).collect() });
    app.on_msg(Msg::Live { key: "KOD-3".into(), output: serde_json::from_value(json!({"job_id": JOB, "seq": 3, "source": "tool", "text": "running 12 tests\ntest auth::refresh ... ok\n"})).unwrap() });
    // Open the grep output.
    key(&mut app, KeyCode::Char('k'));
    key(&mut app, KeyCode::Char('k'));
    key(&mut app, KeyCode::Char('k'));
    key(&mut app, KeyCode::Enter);
    app
}

#[test]
fn board() {
    let mut app = app();
    insta::assert_snapshot!("board_120x30", render(&app, 120, 30));
    // 80x24: fewer columns, scrolled with the cursor, still every key in reach.
    insta::assert_snapshot!("board_80x24", render(&app, 80, 24));
    for _ in 0..5 {
        key(&mut app, KeyCode::Char('l'));
    }
    insta::assert_snapshot!("board_80x24_scrolled", render(&app, 80, 24));
}

#[test]
fn board_list_and_filter() {
    let mut app = app();
    key(&mut app, KeyCode::Char('v'));
    insta::assert_snapshot!("list_100x20", render(&app, 100, 20));
    key(&mut app, KeyCode::Char('/'));
    chars(&mut app, "#bug");
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.list_tasks().iter().map(|t| t.key.as_str()).collect::<Vec<_>>(), ["KOD-2"]);
    // The filter is on screen while it hides tasks, in the list and on the board.
    assert!(render(&app, 100, 20).contains("filter: #bug  (/ changes it, Esc clears it)"), "{}", render(&app, 100, 20));
    key(&mut app, KeyCode::Char('v'));
    insta::assert_snapshot!("board_filtered_80x24", render(&app, 80, 24));
    key(&mut app, KeyCode::Char('v'));
    key(&mut app, KeyCode::Char('/'));
    for _ in 0..4 {
        key(&mut app, KeyCode::Backspace);
    }
    chars(&mut app, "@bob");
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.list_tasks().iter().map(|t| t.key.as_str()).collect::<Vec<_>>(), ["KOD-3"]);
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.list_tasks().len(), 5, "Esc clears the filter");
}

#[test]
fn board_keys_move_tasks_only_where_the_workflow_allows() {
    let mut app = app();
    // KOD-1 in Backlog: > goes to Ready (allowed), < has nowhere to go.
    assert_eq!(key(&mut app, KeyCode::Char('>')), vec![Effect::Move { key: "KOD-1".into(), to: "Ready".into() }]);
    assert_eq!((app.board.col, app.selected().map(|t| t.key.as_str())), (1, Some("KOD-1")), "the cursor follows the task");
    // A second > moves the same task on, not whatever sat at its row in Ready.
    assert_eq!(key(&mut app, KeyCode::Char('>')), vec![Effect::Move { key: "KOD-1".into(), to: "In Progress".into() }]);
    // The server's answers (and other people's moves) keep the cursor on it.
    let mut t: Value = task(1, "Add a login page", "In Progress", &["web"], None);
    t["version"] = json!(3);
    app.on_msg(Msg::Task(serde_json::from_value(t).unwrap()));
    app.on_msg(Msg::Task(serde_json::from_value(task(9, "Another one", "In Progress", &[], None)).unwrap()));
    assert_eq!(app.selected().map(|t| t.key.as_str()), Some("KOD-1"));
    let mut app = self::app();
    // KOD-5 in QA: > to Staging is allowed, < to Code Review is not; the message says
    // where it may go.
    key(&mut app, KeyCode::Char('l'));
    key(&mut app, KeyCode::Char('l'));
    key(&mut app, KeyCode::Char('l'));
    key(&mut app, KeyCode::Char('l'));
    assert_eq!(app.selected().unwrap().key, "KOD-5");
    assert!(key(&mut app, KeyCode::Char('<')).is_empty());
    let (msg, error) = app.status.clone().unwrap();
    assert!(error && msg.contains("QA -> Code Review is not allowed; allowed: Staging, In Progress"), "{msg}");
    // m lists the allowed moves.
    key(&mut app, KeyCode::Char('m'));
    assert!(matches!(&app.overlay, Overlay::Move { options, .. } if options == &["Staging".to_owned(), "In Progress".to_owned()]));
    insta::assert_snapshot!("move_picker", render(&app, 80, 24));
    key(&mut app, KeyCode::Char('j'));
    assert_eq!(key(&mut app, KeyCode::Enter), vec![Effect::Move { key: "KOD-5".into(), to: "In Progress".into() }]);
    assert!(matches!(app.overlay, Overlay::None));
    // Vim keys and arrows both move the cursor.
    key(&mut app, KeyCode::Char('h'));
    key(&mut app, KeyCode::Left);
    assert_eq!(app.board.col, 0, "the cursor went with KOD-5 to In Progress, then two columns left");
    key(&mut app, KeyCode::Char('q'));
    assert!(app.quit);
    // q quits from the task's pane, the agents and the jobs too; Esc goes back.
    for view in ['\n', 'a', 'J'] {
        let mut app = self::app();
        match view {
            '\n' => assert_eq!(key(&mut app, KeyCode::Enter), vec![Effect::OpenTask("KOD-1".into())]),
            c => drop(key(&mut app, KeyCode::Char(c))),
        }
        key(&mut app, KeyCode::Esc);
        assert!(!app.quit && app.view == View::Board, "Esc goes back");
        match view {
            '\n' => drop(key(&mut app, KeyCode::Enter)),
            c => drop(key(&mut app, KeyCode::Char(c))),
        }
        let effects = key(&mut app, KeyCode::Char('q'));
        assert!(app.quit, "q quits from {view:?}");
        assert!(view != '\n' || effects == vec![Effect::CloseTask], "{effects:?}");
    }
}

/// Answers arrive out of order: a copy of a task read before a move (the refresh an
/// event asked for) must not put it back on screen, or the next key moves it from the
/// wrong column. The server's answers to the moves, and a refusal, do count.
#[test]
fn a_copy_read_before_a_move_does_not_undo_it() {
    let mut app = app();
    let at = |status: &str, version: i32| {
        let mut t = task(1, "Add a login page", status, &["web"], None);
        t["version"] = json!(version);
        serde_json::from_value::<kodel_core::api::Task>(t).unwrap()
    };
    let shown = |app: &App| app.tasks.iter().find(|t| t.key == "KOD-1").map(|t| t.status.clone()).unwrap();
    assert_eq!(key(&mut app, KeyCode::Char('>')), vec![Effect::Move { key: "KOD-1".into(), to: "Ready".into() }]);
    app.on_msg(Msg::Task(at("Backlog", 1)));
    assert_eq!(shown(&app), "Ready");
    // Nor in the task's pane, opened meanwhile.
    assert_eq!(key(&mut app, KeyCode::Enter), vec![Effect::OpenTask("KOD-1".into())]);
    app.on_msg(Msg::Detail { key: "KOD-1".into(), task: at("Backlog", 1), comments: vec![], jobs: vec![], artifacts: vec![] });
    assert_eq!(app.detail.as_ref().and_then(|d| d.task.as_ref()).map(|t| t.status.as_str()), Some("Ready"));
    key(&mut app, KeyCode::Esc);
    assert_eq!(key(&mut app, KeyCode::Char('>')), vec![Effect::Move { key: "KOD-1".into(), to: "In Progress".into() }]);
    // The first move's answer, while the second is in flight: it stays where it goes.
    app.on_msg(Msg::Moved(at("Ready", 2)));
    assert_eq!(shown(&app), "In Progress");
    app.on_msg(Msg::Moved(at("In Progress", 3)));
    // Now settled: an older copy is ignored, a newer one (someone else's move) is shown.
    app.on_msg(Msg::Task(at("Ready", 2)));
    assert_eq!(shown(&app), "In Progress");
    app.on_msg(Msg::Task(at("Code Review", 4)));
    assert_eq!(shown(&app), "Code Review");
    // A refused move puts the task back where the server has it.
    let mut app = self::app();
    key(&mut app, KeyCode::Char('>'));
    app.on_msg(Msg::MoveUndone { key: "KOD-1".into(), task: Some(at("Backlog", 1)) });
    assert_eq!(shown(&app), "Backlog");
    assert_eq!(app.selected().map(|t| t.key.as_str()), Some("KOD-1"));
}

/// `>` twice in the task's pane makes two moves, as on the board (the second used to
/// start again from the status the pane was opened with).
#[test]
fn moves_from_the_task_pane_go_on_from_where_the_last_one_went() {
    let mut app = app();
    assert_eq!(key(&mut app, KeyCode::Enter), vec![Effect::OpenTask("KOD-1".into())]);
    let opened = serde_json::from_value(task(1, "Add a login page", "Backlog", &["web"], None)).unwrap();
    app.on_msg(Msg::Detail { key: "KOD-1".into(), task: opened, comments: vec![], jobs: vec![], artifacts: vec![] });
    assert_eq!(key(&mut app, KeyCode::Char('>')), vec![Effect::Move { key: "KOD-1".into(), to: "Ready".into() }]);
    assert_eq!(key(&mut app, KeyCode::Char('>')), vec![Effect::Move { key: "KOD-1".into(), to: "In Progress".into() }]);
    assert_eq!(app.detail.as_ref().and_then(|d| d.task.as_ref()).map(|t| t.status.as_str()), Some("In Progress"));
    // `<` on the first status says why nothing happens.
    let mut app = self::app();
    assert!(key(&mut app, KeyCode::Char('<')).is_empty());
    let (msg, error) = app.status.clone().unwrap();
    assert!(error && msg.contains("KOD-1 is in Backlog, the workflow's first status"), "{msg}");
}

#[test]
fn a_new_task_form() {
    let mut app = app();
    key(&mut app, KeyCode::Char('n'));
    // Saving without a title says why and keeps the form.
    assert!(app.on_key(KeyEvent::new(KeyCode::Char('s'), KeyModifiers::CONTROL)).is_empty());
    assert!(matches!(&app.overlay, Overlay::Form(f) if f.error.as_deref() == Some("a task needs a title")));
    chars(&mut app, "Rate-limit the login");
    key(&mut app, KeyCode::Tab);
    chars(&mut app, "Five tries a minute.");
    key(&mut app, KeyCode::Enter);
    chars(&mut app, "Then a captcha.");
    key(&mut app, KeyCode::Tab);
    key(&mut app, KeyCode::Right);
    key(&mut app, KeyCode::Right);
    key(&mut app, KeyCode::Tab);
    chars(&mut app, "security, web");
    insta::assert_snapshot!("new_task_form", render(&app, 100, 30));
    assert_eq!(app.on_key(KeyEvent::new(KeyCode::Char('e'), KeyModifiers::CONTROL)), vec![Effect::Edit("Five tries a minute.\nThen a captcha.".into())]);
    let effects = app.on_key(KeyEvent::new(KeyCode::Char('s'), KeyModifiers::CONTROL));
    let [Effect::Create { project, body }] = effects.as_slice() else { panic!("{effects:?}") };
    assert_eq!(project, "KOD");
    assert_eq!(body["title"], "Rate-limit the login");
    assert_eq!(body["priority"], "medium");
    assert_eq!(body["labels"], json!(["security", "web"]));
    assert_eq!(body["assignee"], Value::Null);
    // The form stays until the server took it.
    assert!(matches!(app.overlay, Overlay::Form(_)));
    app.on_msg(Msg::Saved(serde_json::from_value(task(6, "Rate-limit the login", "Backlog", &["security", "web"], None)).unwrap()));
    assert!(matches!(app.overlay, Overlay::None));
    assert_eq!(app.column_tasks("Backlog").len(), 3);
}

#[test]
fn editing_sends_the_version() {
    let mut app = app();
    key(&mut app, KeyCode::Char('e'));
    key(&mut app, KeyCode::Backspace);
    let effects = app.on_key(KeyEvent::new(KeyCode::Char('s'), KeyModifiers::CONTROL));
    let [Effect::Update { key: k, body }] = effects.as_slice() else { panic!("{effects:?}") };
    assert_eq!((k.as_str(), body["version"].as_i64(), body["title"].as_str()), ("KOD-1", Some(1), Some("Add a login pag")));
    // A conflict from the server shows in the form.
    app.on_msg(Msg::Failed("task KOD-1 changed since you read it (version_conflict)".into()));
    assert!(matches!(&app.overlay, Overlay::Form(f) if f.error.as_deref().is_some_and(|e| e.contains("version_conflict"))));
}

#[test]
fn task_detail_with_the_agent_stream() {
    let mut app = task_app();
    insta::assert_snapshot!("task_120x30", render(&app, 120, 30));
    insta::assert_snapshot!("task_80x24", render(&app, 80, 24));
    // Following the newest again, and live output growing.
    key(&mut app, KeyCode::Char('G'));
    app.on_msg(Msg::Live { key: "KOD-3".into(), output: serde_json::from_value(json!({"job_id": JOB, "seq": 3, "source": "tool", "text": "test auth::expiry ... ok\n"})).unwrap() });
    let screen = render(&app, 120, 30);
    assert!(screen.contains("test auth::expiry ... ok"), "{screen}");
    // Search: the match is selected.
    key(&mut app, KeyCode::Char('/'));
    chars(&mut app, "E0425");
    key(&mut app, KeyCode::Enter);
    let d = app.detail.as_ref().unwrap();
    assert!(d.stream.entries[d.sel.unwrap()].text().contains("E0425"));
    // The patch can be read before deciding; A from there asks for the comment.
    key(&mut app, KeyCode::Char('v'));
    insta::assert_snapshot!("artifact_view", render(&app, 80, 24));
    key(&mut app, KeyCode::Char('j'));
    assert!(matches!(app.overlay, Overlay::Artifact { scroll: 1 }));
    // Approve the pending patch, with a comment.
    key(&mut app, KeyCode::Char('A'));
    chars(&mut app, "ship it");
    let effects = key(&mut app, KeyCode::Enter);
    assert!(matches!(effects.as_slice(), [Effect::Decide { approve: true, comment: Some(c), .. }] if c == "ship it"), "{effects:?}");
    // Reject asks why; comment and back.
    key(&mut app, KeyCode::Char('R'));
    assert!(matches!(&app.overlay, Overlay::Prompt { purpose: PromptFor::Reject(_), .. }));
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Char('c'));
    chars(&mut app, "nice");
    assert_eq!(key(&mut app, KeyCode::Enter), vec![Effect::Comment { key: "KOD-3".into(), body: "nice".into() }]);
    assert_eq!(key(&mut app, KeyCode::Esc), vec![Effect::CloseTask]);
    assert_eq!(app.view, View::Board);
}

#[test]
fn org_events_keep_the_board_current() {
    let mut app = app();
    let ev = |kind: &str, task: &str, payload: Value| Msg::OrgEvent(serde_json::from_value(json!({"id": 9, "type": kind, "task": task, "seq": 2, "actor": null, "payload": payload, "created_at": AT})).unwrap());
    assert_eq!(app.on_msg(ev("task.moved", "KOD-1", json!({"from": "Backlog", "to": "Ready"}))), vec![Effect::RefreshTask("KOD-1".into())]);
    assert!(app.on_msg(ev("task.moved", "OTHER-1", json!({"from": "Backlog", "to": "Ready"}))).is_empty(), "other projects' tasks are not fetched");
    let job = json!("01a2204f-0000-7000-8000-000000000001");
    app.on_msg(ev("job.started", "KOD-1", json!({"job_id": job, "kind": "review", "agent": job, "attempt": 1})));
    assert_eq!(app.running.get("KOD-1").map(String::as_str), Some("review"));
    app.on_msg(ev("job.succeeded", "KOD-1", json!({"job_id": job, "kind": "review", "summary": "fine"})));
    assert!(!app.running.contains_key("KOD-1"));
    // A failed job of the project says why on the board, whole (what to set comes last).
    let error = "Ollama does not answer: start it (`ollama serve`, then `ollama pull` the model), or set OPENAI_API_KEY and KODEL_DEFAULT_MODEL on the server (could not reach ollama)";
    app.on_msg(ev("job.failed", "KOD-1", json!({"job_id": job, "kind": "implement", "error": error})));
    let screen = render(&app, 80, 24);
    let footer: String = screen.lines().rev().take(3).collect::<Vec<_>>().join(" ");
    assert!(footer.contains("KOD-1: implement job failed: Ollama does not answer") && footer.contains("KODEL_DEFAULT_MODEL"), "{screen}");
    // A reconnect after a lost position reloads the board.
    assert_eq!(app.on_msg(Msg::Resync), vec![Effect::OpenProject("KOD".into())]);
    app.on_msg(Msg::Conn(Conn::Retrying { attempt: 2, error: "cannot connect".into() }));
    assert!(render(&app, 80, 24).contains("reconnecting (2)"));
}

#[test]
fn agents_jobs_and_help() {
    let mut app = app();
    assert_eq!(key(&mut app, KeyCode::Char('a')), vec![Effect::LoadAgents]);
    app.on_msg(Msg::Agents(vec![
        serde_json::from_value(json!({"id": "01a2204f-0000-7000-8000-00000000000a", "name": "build-1", "labels": ["linux", "rust"], "version": "0.1.0", "status": "busy",
            "current_job": "01a2204f-0000-7000-8000-000000000001", "current_task": "KOD-3", "disk_bytes": 734003200, "last_seen_at": AT, "created_at": AT})).unwrap(),
        serde_json::from_value(json!({"id": "01a2204f-0000-7000-8000-00000000000b", "name": "laptop", "labels": [], "version": "0.1.0", "status": "offline",
            "current_job": null, "current_task": null, "disk_bytes": null, "last_seen_at": AT, "created_at": AT})).unwrap(),
    ]));
    insta::assert_snapshot!("agents", render(&app, 100, 12));
    assert_eq!(key(&mut app, KeyCode::Tab), vec![Effect::LoadJobs]);
    app.on_msg(Msg::Jobs(vec![
        serde_json::from_value(job("KOD-3", "implement", "running", None)).unwrap(),
        serde_json::from_value(job("KOD-5", "qa", "failed", Some("project KOD has no test command for QA jobs to run"))).unwrap(),
    ]));
    insta::assert_snapshot!("jobs", render(&app, 100, 12));
    key(&mut app, KeyCode::Char('j'));
    assert_eq!(key(&mut app, KeyCode::Enter), vec![Effect::OpenTask("KOD-5".into())]);
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Char('?'));
    insta::assert_snapshot!("help_80x24", render(&app, 80, 24));
    key(&mut app, KeyCode::Char('x'));
    assert_eq!(key(&mut app, KeyCode::Char('J')), vec![Effect::LoadJobs]);
    // The selected job's error is shown whole below the table, hint and all.
    let long = "Ollama does not answer: start it (`ollama serve`, then `ollama pull` the model), or set OPENAI_API_KEY, ANTHROPIC_API_KEY or OPENROUTER_API_KEY and KODEL_DEFAULT_MODEL on the server (could not reach ollama: connection refused)";
    app.on_msg(Msg::Jobs(vec![serde_json::from_value(job("KOD-5", "implement", "failed", Some(long))).unwrap()]));
    let screen = render(&app, 80, 24);
    let joined: String = screen.lines().map(|l| l.trim_matches(|c: char| c == '"' || c == '│' || c == ' ')).collect::<Vec<_>>().join(" ");
    assert!(joined.contains("KODEL_DEFAULT_MODEL on the server"), "{screen}");
    insta::assert_snapshot!("jobs_failed_80x24", screen);
    key(&mut app, KeyCode::Char('x'));
    assert!(matches!(app.overlay, Overlay::None), "any key closes the help");
}

#[test]
fn no_color_means_no_colour() {
    let app = task_app();
    let colours = |color: bool| {
        let mut t = Terminal::new(TestBackend::new(120, 30)).unwrap();
        t.draw(|f| draw(f, &app, Theme { color })).unwrap();
        let buf = t.backend().buffer().clone();
        buf.content().iter().filter(|c| c.fg != ratatui::style::Color::Reset || c.bg != ratatui::style::Color::Reset).count()
    };
    assert!(colours(true) > 0, "colour is used when allowed");
    assert_eq!(colours(false), 0, "NO_COLOR: not one coloured cell");
}

#[test]
fn switching_project_and_org() {
    let mut app = app();
    assert_eq!(key(&mut app, KeyCode::Char('p')), vec![Effect::LoadProjects]);
    let mut other: Value = project();
    other["key"] = json!("WEB");
    other["name"] = json!("Website");
    app.on_msg(Msg::Projects { org: "acme".into(), projects: vec![serde_json::from_value(project()).unwrap(), serde_json::from_value(other.clone()).unwrap()] });
    key(&mut app, KeyCode::Char('j'));
    insta::assert_snapshot!("project_picker", render(&app, 80, 16));
    assert_eq!(key(&mut app, KeyCode::Enter), vec![Effect::OpenProject("WEB".into())]);
    // A late board of the project left behind is dropped; WEB's is shown and saved.
    let board = |org: &str, p: Value| Msg::Board { org: org.into(), project: serde_json::from_value(p).unwrap(), tasks: vec![], running: vec![] };
    assert!(app.on_msg(board("acme", project())).is_empty());
    assert_eq!(app.project.as_ref().map(|p| p.key.as_str()), Some("KOD"), "still the old board until WEB's arrives");
    assert_eq!(app.on_msg(board("acme", other.clone())), vec![Effect::SaveSettings]);
    assert_eq!(app.project.as_ref().map(|p| p.key.as_str()), Some("WEB"));
    assert_eq!(key(&mut app, KeyCode::Char('o')), vec![Effect::LoadOrgs]);
    app.on_msg(Msg::Orgs(vec![serde_json::from_value(json!({"id": "00000000-0000-0000-0000-000000000003", "slug": "globex", "name": "Globex", "role": "member", "created_at": AT})).unwrap()]));
    assert_eq!(key(&mut app, KeyCode::Enter), vec![Effect::FollowOrg, Effect::LoadProjects]);
    assert_eq!(app.org, "globex");
    assert!(app.project.is_none() && app.tasks.is_empty(), "the old org's board is gone");
    // Answers about the old org are dropped; the new org's projects arrive and the
    // first one opens.
    assert!(app.on_msg(board("acme", other)).is_empty());
    assert!(app.project.is_none());
    assert!(app.on_msg(Msg::Projects { org: "acme".into(), projects: vec![serde_json::from_value(project()).unwrap()] }).is_empty());
    assert_eq!(app.on_msg(Msg::Projects { org: "globex".into(), projects: vec![serde_json::from_value(project()).unwrap()] }), vec![Effect::OpenProject("KOD".into())]);
    assert_eq!(app.on_msg(board("globex", project())), vec![Effect::SaveSettings], "the switch is remembered once the board is there");
}

#[test]
fn a_prompt_and_a_refused_decision() {
    let mut app = task_app();
    key(&mut app, KeyCode::Char('c'));
    chars(&mut app, "Please keep the old token valid for a minute");
    insta::assert_snapshot!("comment_prompt", render(&app, 80, 24));
    key(&mut app, KeyCode::Esc);
    // A decided artifact is not decided again; the message says so.
    if let Some(d) = app.detail.as_mut() {
        d.artifacts[0].status = kodel_core::jobs::ArtifactState::Approved;
    }
    assert!(key(&mut app, KeyCode::Char('R')).is_empty());
    let (msg, error) = app.status.clone().unwrap();
    assert!(error && msg.contains("already approved"), "{msg}");
}

/// The first-run message (and any long one) is read whole in the footer, over up to
/// three lines: what it says to do comes at its end.
#[test]
fn a_long_message_is_not_cut() {
    let mut app = app();
    let welcome = "AI jobs use ollama/qwen2.5-coder: set OPENAI_API_KEY, ANTHROPIC_API_KEY or OPENROUTER_API_KEY before `kodel up` for another. ? shows the keys.";
    app.status = Some((welcome.into(), false));
    let screen = render(&app, 80, 24);
    let rows: Vec<&str> = screen.lines().collect();
    assert!(rows[rows.len() - 2].contains("AI jobs use ollama/qwen2.5-coder"), "{screen}");
    assert!(rows[rows.len() - 1].contains("before `kodel up` for another. ? shows the keys."), "{screen}");
}

/// The header says who is logged in, where there is room for it.
#[test]
fn the_header_says_who_you_are() {
    let mut app = app();
    app.user = Some("ada@example.com".into());
    let wide = render(&app, 120, 20);
    assert!(wide.lines().next().unwrap().contains("ada@example.com  ● live"), "{wide}");
    let narrow = render(&app, 80, 20);
    assert!(!narrow.lines().next().unwrap().contains("ada@example.com"), "{narrow}");
}

/// A column with more cards than fit says how many are out of view, below and then above.
#[test]
fn a_long_column_says_how_many_cards_are_out_of_view() {
    let mut app = App::new("acme".into());
    let tasks: Vec<Value> = (1..=30).map(|n| task(n, &format!("Task number {n}"), "Backlog", &["x"], None)).collect();
    app.on_msg(Msg::Board {
        org: "acme".into(),
        project: serde_json::from_value(project()).unwrap(),
        tasks: tasks.into_iter().map(|t| serde_json::from_value(t).unwrap()).collect(),
        running: vec![],
    });
    // 80x24: 20 rows in the column, 3 rows a card: 6 cards shown, 24 below.
    let screen = render(&app, 80, 24);
    assert!(screen.contains("↓24 more"), "{screen}");
    for _ in 0..29 {
        key(&mut app, KeyCode::Char('j'));
    }
    let screen = render(&app, 80, 24);
    assert!(screen.contains("↑24") && !screen.contains("more"), "{screen}");
    assert!(screen.contains("KOD-30"), "{screen}");
}

/// A review reads as text: its markdown headings, bold and bullets are shown as such,
/// not as marks.
#[test]
fn a_review_artifact_reads_without_markdown_marks() {
    let mut app = task_app();
    let review = "# Review\n\n**Verdict: approve**\n\n- `src/auth.rs:12` (nit): a **short** docstring would help\n";
    let d = app.detail.as_mut().unwrap();
    d.artifacts = vec![serde_json::from_value(json!({"id": "01a2204f-0000-7000-8000-000000000008", "job": "01a2204f-0000-7000-8000-000000000001", "task": "KOD-3", "kind": "review",
        "title": "Review: approve (1 finding)", "content": review, "reference": null, "status": "pending", "decided_by": null, "decided_at": null, "comment": null, "created_at": AT})).unwrap()];
    key(&mut app, KeyCode::Char('v'));
    assert!(matches!(app.overlay, Overlay::Artifact { .. }));
    let screen = render(&app, 80, 24);
    assert!(!screen.contains("**") && !screen.contains("# Review"), "{screen}");
    assert!(screen.contains("│Review") && screen.contains("│Verdict: approve") && screen.contains("│• `src/auth.rs:12` (nit): a short docstring"), "{screen}");
}

/// The agents and jobs views are read again on the periodic refresh; other views are not.
#[test]
fn the_agents_and_jobs_views_refresh() {
    let mut app = app();
    assert!(app.refresh().is_empty(), "the board follows its stream");
    key(&mut app, KeyCode::Char('a'));
    assert_eq!(app.refresh(), vec![Effect::LoadAgents]);
    key(&mut app, KeyCode::Char('J'));
    assert_eq!(app.refresh(), vec![Effect::LoadJobs]);
}

/// `s` in the task view starts a job from a template; after a failure the failed job's
/// template is the one picked first, so `s` then Enter tries it again.
#[test]
fn a_job_is_started_or_retried_from_the_task_view() {
    let mut app = task_app();
    app.detail.as_mut().unwrap().jobs = vec![serde_json::from_value(job("KOD-3", "qa", "failed", Some("tests failed"))).unwrap()];
    assert_eq!(key(&mut app, KeyCode::Char('s')), vec![Effect::LoadTemplates]);
    let templates = [("implement-template", "implement"), ("code-review-template", "review"), ("qa-template", "qa")];
    app.on_msg(Msg::Templates(templates.iter().map(|(n, k)| (n.to_string(), k.to_string())).collect()));
    let screen = render(&app, 80, 24);
    assert!(screen.contains("start a job") && screen.contains("qa-template"), "{screen}");
    assert_eq!(key(&mut app, KeyCode::Enter), vec![Effect::StartJob { key: "KOD-3".into(), template: "qa-template".into() }]);
    assert!(matches!(app.overlay, Overlay::None));
    // Another template by hand.
    key(&mut app, KeyCode::Char('s'));
    app.on_msg(Msg::Templates(templates.iter().map(|(n, k)| (n.to_string(), k.to_string())).collect()));
    key(&mut app, KeyCode::Char('k'));
    assert_eq!(key(&mut app, KeyCode::Enter), vec![Effect::StartJob { key: "KOD-3".into(), template: "code-review-template".into() }]);
}

/// The usage view (`U`): the org's cost by day and by model as bars, the totals above,
/// `t` for tokens instead of dollars.
#[test]
fn usage_view() {
    let mut app = app();
    let effects = key(&mut app, KeyCode::Char('U'));
    assert!(matches!(effects.as_slice(), [Effect::LoadUsage]), "{effects:?}");
    assert!(render(&app, 100, 30).contains("reading the org's usage"));
    let row = |key: &str, calls: u64, tin: u64, tout: u64, cost: f64, unpriced: u64| {
        json!({"key": key, "calls": calls, "errors": 0, "tokens_in": tin, "tokens_out": tout, "tokens_cached": 0, "cost": cost, "unpriced_calls": unpriced})
    };
    let report = |group: &str, data: Vec<Value>| {
        serde_json::from_value(json!({"from": "2026-11-04T00:00:00Z", "to": "2026-12-04T00:00:00Z", "group_by": group, "source": "clickhouse", "data": data})).unwrap()
    };
    let by_day = report("day", vec![row("2026-12-01", 10, 12_000, 900, 0.42, 0), row("2026-12-02", 4, 3_000, 200, 0.11, 1), row("2026-12-03", 20, 40_000, 2_000, 1.37, 0)]);
    let by_model = report("model", vec![row("anthropic/claude-sonnet-4", 30, 52_000, 2_900, 1.90, 0), row("ollama/qwen2.5-coder", 4, 3_000, 200, 0.0, 0)]);
    app.on_msg(Msg::Usage { by_day: Box::new(by_day), by_model: Box::new(by_model) });
    let screen = render(&app, 100, 30);
    assert!(screen.contains("34 calls") && screen.contains("$1.90") && screen.contains("+ 1 call with no price") && screen.contains("from clickhouse"), "{screen}");
    assert!(screen.contains("anthropic/claude-sonnet-4") && screen.contains("12-03") && screen.contains("$0.42"), "{screen}");
    insta::assert_snapshot!(screen);
    key(&mut app, KeyCode::Char('t'));
    let screen = render(&app, 100, 30);
    assert!(screen.contains("tokens by day") && screen.contains("42.0k"), "{screen}");
}

/// The task pane says what its jobs spent, summed over them.
#[test]
fn the_task_pane_sums_what_its_jobs_spent() {
    let mut a = job("KOD-3", "implement", "succeeded", None);
    a["usage"] = json!({"input_tokens": 1200, "output_tokens": 300, "cached_tokens": 0, "cost_micros": 9000, "llm_calls": 3});
    let mut b = job("KOD-3", "review", "paused", None);
    b["usage"] = json!({"input_tokens": 800, "output_tokens": 100, "cost_micros": 3400, "llm_calls": 1});
    let jobs: Vec<kodel_core::jobs::Job> = [a, b].into_iter().map(|j| serde_json::from_value(j).unwrap()).collect();
    assert_eq!(kodel_tui::tui::detail::spent(&jobs).as_deref(), Some("$0.0124 · 2000 tokens in, 400 out · 4 LLM calls"));
    let none: Vec<kodel_core::jobs::Job> = vec![serde_json::from_value(job("KOD-3", "qa", "pending", None)).unwrap()];
    assert_eq!(kodel_tui::tui::detail::spent(&none), None, "nothing said before a call");
}
