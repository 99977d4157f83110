//! Analytics on a real ClickHouse (Debian's 18.16, a private server per test): LLM
//! calls and job events shipped from the outbox once each, across an outage and a
//! batch shipped twice; the usage report the same from ClickHouse and PostgreSQL;
//! costs from the price table.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{TestApp, test_config};
use kodel_server::analytics::clickhouse::{ClickHouse, ClickHouseConfig};
use kodel_server::analytics::shipper;
use kodel_server::config::LlmSettings;
use kodel_testkit::clickhouse::ClickHouseServer;
use kodel_testkit::fresh_database;
use kodel_testkit::scripted_llm::ScriptedLlm;
use serde_json::{Value, json};

fn ch_config(ch: &ClickHouseServer) -> ClickHouseConfig {
    ClickHouseConfig { url: ch.url(), user: None, password: None, database: "kodel".into() }
}

/// A server whose LLM calls go to a scripted provider, shipping to `ch` when given.
async fn app(llm: &ScriptedLlm, db: sqlx::postgres::PgConnectOptions, ch: Option<&ClickHouseServer>) -> TestApp {
    let mut config = test_config();
    config.llm = LlmSettings {
        openai_base_url: Some(llm.openai_base()),
        openai_api_key: Some("sk-test".into()),
        default_model: Some("openai/gpt-4o-mini".into()),
        llm_concurrency: 4,
        llm_timeout: 30.0,
        ..Default::default()
    };
    config.clickhouse_url = ch.map(|c| c.url());
    TestApp::spawn_with(db, config).await
}

/// One call through the gateway; its answer's status.
async fn gateway_call(app: &TestApp, token: &str, model: &str) -> u16 {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "How much is 2 + 2?"}]});
    let r = app.http.post(format!("{}/v1/chat/completions", app.base)).bearer_auth(token).json(&body).send().await.unwrap();
    r.status().as_u16()
}

/// Waits for a ClickHouse query to answer `want`.
async fn wait_for(ch: &ClickHouseServer, sql: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = ch.query(sql).await;
        if got.trim() == want {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: {} after 30 s, want {want}", got.trim());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn unshipped(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM analytics_outbox WHERE shipped_at IS NULL").fetch_one(&mut app.sql().await).await.unwrap()
}

/// (calls, input tokens, output tokens, cost) as the outbox has them.
async fn outbox_totals(app: &TestApp) -> String {
    let (n, i, o, c): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), sum((payload->>'input_tokens')::bigint)::bigint, sum((payload->>'output_tokens')::bigint)::bigint,
                sum((payload->>'cost_micros')::bigint)::bigint
         FROM analytics_outbox WHERE kind = 'llm_call'",
    )
    .fetch_one(&mut app.sql().await)
    .await
    .unwrap();
    format!("{n}\t{i}\t{o}\t{c}")
}

const CH_TOTALS: &str = "SELECT count(), sum(input_tokens), sum(output_tokens), sum(cost_micros) FROM kodel.llm_calls FINAL";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_job_events_reach_clickhouse_once_across_an_outage() {
    let mut ch = ClickHouseServer::start().await;
    let llm = ScriptedLlm::start(vec![]).await;
    let app = app(&llm, fresh_database().await, Some(&ch)).await;
    let token = app.owner_with_project("ch@example.com", "chorg", "CH").await;

    for _ in 0..3 {
        assert_eq!(gateway_call(&app, &token, "gpt-4o-mini").await, 200);
    }
    wait_for(&ch, "SELECT count() FROM kodel.llm_calls FINAL", "3").await;

    // ClickHouse goes away: calls and job changes go on, and wait in the outbox.
    ch.stop();
    for _ in 0..4 {
        assert_eq!(gateway_call(&app, &token, "gpt-4o-mini").await, 200);
    }
    let (s, task) = app.post("/api/v1/orgs/chorg/projects/CH/tasks", &token, json!({"title": "Count me"})).await;
    assert_eq!(s, 201, "{task}");
    let (s, job) = app.post("/api/v1/orgs/chorg/jobs", &token, json!({"task": task["key"], "template": "implement-template"})).await;
    assert_eq!(s, 201, "{job}");
    let (s, _) = app.post(&format!("/api/v1/orgs/chorg/jobs/{}/cancel", job["id"].as_str().unwrap()), &token, json!({})).await;
    assert_eq!(s.as_u16() / 100, 2);
    assert!(unshipped(&app).await >= 4, "the rows wait while ClickHouse is down");
    let (_, metrics) = app.call(reqwest::Method::GET, "/metrics", None, None).await;
    let backlog = metrics.as_str().unwrap().lines().find(|l| l.starts_with("kodel_analytics_outbox_backlog ")).unwrap().to_owned();
    assert_ne!(backlog, "kodel_analytics_outbox_backlog 0", "the backlog is shown");
    let page = metrics.as_str().unwrap();
    assert!(page.contains(r#"kodel_llm_calls_total{provider="openai",status="ok"} 7"#), "{page}");
    assert!(page.contains(r#"kodel_job_changes_total{event="job.created"} 1"#) && page.contains(r#"kodel_job_changes_total{event="job.cancelled"} 1"#), "{page}");
    // Jobs by state, of every org: the one job, cancelled, and none pending.
    assert!(page.contains(r#"kodel_jobs{state="cancelled"} 1"#) && page.contains(r#"kodel_jobs{state="pending"} 0"#), "{page}");
    assert!(page.lines().any(|l| l.starts_with(r#"kodel_llm_cost_dollars_total{provider="openai"} "#) && !l.ends_with(" 0.0")), "{page}");

    // Back: every row arrives, once.
    ch.start_again().await;
    wait_for(&ch, "SELECT count() FROM kodel.llm_calls FINAL", "7").await;
    wait_for(&ch, "SELECT event FROM kodel.job_events FINAL ORDER BY id FORMAT TSV", "job.created\njob.cancelled").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while unshipped(&app).await > 0 {
        assert!(Instant::now() < deadline, "rows left unshipped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Read FINAL, the totals are the outbox's: a batch ClickHouse took as it was
    // killed, and that the shipper sent again, counts once.
    assert_eq!(ch.query(CH_TOTALS).await.trim(), outbox_totals(&app).await);
    let job_row = ch.query("SELECT org, task_id, job_kind, state FROM kodel.job_events FINAL WHERE event = 'job.cancelled' FORMAT TSV").await;
    let task_id: String = sqlx::query_scalar("SELECT id::text FROM org_chorg.tasks").fetch_one(&mut app.sql().await).await.unwrap();
    assert_eq!(job_row.trim(), format!("chorg\t{task_id}\timplement\tcancelled"));
    // Each call is costed at gpt-4o-mini's built-in price.
    let priced: String = ch.query("SELECT countIf(priced = 1 AND cost_micros > 0) FROM kodel.llm_calls FINAL").await;
    assert_eq!(priced.trim(), "7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_shipped_twice_is_counted_once() {
    let ch = ClickHouseServer::start().await;
    let llm = ScriptedLlm::start(vec![]).await;
    // No shipper running: the test ships by hand.
    let app = app(&llm, fresh_database().await, None).await;
    let token = app.owner_with_project("twice@example.com", "twice", "TW").await;
    for _ in 0..5 {
        assert_eq!(gateway_call(&app, &token, "gpt-4o").await, 200);
    }
    let pool = app.server.state.pool.clone();
    let clickhouse = ClickHouse::connect(&ch_config(&ch)).await.unwrap();
    assert_eq!(shipper::ship_once(&pool, &clickhouse).await.unwrap(), 5);
    // A crash after the insert and before the mark: the mark is lost with the
    // transaction, so the rows are unshipped again and go out a second time.
    sqlx::query("UPDATE analytics_outbox SET shipped_at = NULL").execute(&pool).await.unwrap();
    assert_eq!(shipper::ship_once(&pool, &clickhouse).await.unwrap(), 5);
    assert_eq!(ch.query("SELECT count() >= 5 FROM kodel.llm_calls").await.trim(), "1");
    assert_eq!(ch.query(CH_TOTALS).await.trim(), outbox_totals(&app).await, "totals read FINAL are not doubled");
    let (s, report) = app.get("/api/v1/orgs/twice/usage?group_by=model", &token).await;
    assert_eq!(s, 200, "{report}");
    // And the report from ClickHouse (same data) says the same as PostgreSQL's.
    let with_ch = {
        let mut config = test_config();
        config.clickhouse_url = Some(ch.url());
        TestApp::spawn_with(app.db.clone(), config).await
    };
    let (s, from_ch) = with_ch.get("/api/v1/orgs/twice/usage?group_by=model", &token).await;
    assert_eq!(s, 200, "{from_ch}");
    assert_eq!((report["source"].as_str(), from_ch["source"].as_str()), (Some("postgres"), Some("clickhouse")));
    assert_eq!(report["data"], from_ch["data"]);
    assert_eq!(from_ch["data"][0]["calls"], 5, "{from_ch}");
}

/// Calls spread over days, projects, tasks, models, users and agents: every grouping
/// answers the same from ClickHouse as from PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_report_is_the_same_from_clickhouse_and_postgres() {
    let ch = ClickHouseServer::start().await;
    let llm = ScriptedLlm::start(vec![]).await;
    let app = app(&llm, fresh_database().await, None).await;
    let owner = app.owner_with_project("rep@example.com", "rep", "RP").await;
    let (_, p2) = app.post("/api/v1/orgs/rep/projects", &owner, json!({"key": "QA", "name": "QA"})).await;
    assert!(p2["key"] == "QA");
    // A second person in the org calls the gateway too.
    let two = app.register("two@example.com").await;
    let (s, m) = app.post("/api/v1/orgs/rep/members", &owner, json!({"email": "two@example.com", "role": "member"})).await;
    assert_eq!(s, 201, "{m}");
    for (who, model) in [(&owner, "gpt-4o"), (&owner, "gpt-4o-mini"), (&two, "gpt-4o"), (&two, "my-own-model"), (&owner, "gpt-4o")] {
        assert_eq!(gateway_call(&app, who, model).await, 200);
    }
    // Agents' calls of jobs on tasks in both projects, on other days: rows as the
    // outbox's writer makes them, with the ids of real tasks and an agent.
    let mut db = app.sql().await;
    let tasks: Vec<(String, String)> = {
        let mut out = Vec::new();
        for project in ["RP", "QA"] {
            let (_, t) = app.post(&format!("/api/v1/orgs/rep/projects/{project}/tasks"), &owner, json!({"title": "t"})).await;
            let (id, pid): (String, String) = sqlx::query_as("SELECT t.id::text, t.project_id::text FROM org_rep.tasks t WHERE t.number = $1 AND t.project_id = (SELECT id FROM org_rep.projects WHERE key = $2)")
                .bind(t["number"].as_i64().unwrap() as i32)
                .bind(project)
                .fetch_one(&mut db)
                .await
                .unwrap();
            out.push((id, pid));
        }
        out
    };
    let agent = uuid::Uuid::now_v7();
    sqlx::query("INSERT INTO org_rep.agents (id, name) VALUES ($1, 'builder-1')").bind(agent).execute(&mut db).await.unwrap();
    let org_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM public.orgs WHERE slug = 'rep'").fetch_one(&mut db).await.unwrap();
    for (i, (task, project)) in tasks.iter().cycle().take(6).enumerate() {
        let payload = json!({
            "org_id": org_id, "org": "rep", "project_id": project, "task_id": task, "job_id": uuid::Uuid::now_v7(),
            "agent_id": agent, "user_id": null, "provider": "anthropic", "model": "claude-sonnet-4",
            "input_tokens": 1000 * (i + 1), "output_tokens": 100 * (i + 1), "cached_tokens": 10 * i, "usage_estimated": false,
            "cost_micros": 4500 * (i + 1), "priced": true, "first_token_ms": 120, "total_ms": 900,
            "status": if i == 3 { "error" } else { "ok" }, "error": null,
        });
        sqlx::query("INSERT INTO analytics_outbox (kind, org_id, payload, created_at) VALUES ('llm_call', $1, $2, now() - make_interval(days => $3) - interval '0.4 seconds')")
            .bind(org_id)
            .bind(&payload)
            .bind(i as i32)
            .execute(&mut db)
            .await
            .unwrap();
    }
    // Another org's calls are in neither report.
    sqlx::query("INSERT INTO analytics_outbox (kind, org_id, payload) VALUES ('llm_call', $1, $2)")
        .bind(uuid::Uuid::now_v7())
        .bind(json!({"org": "other", "provider": "openai", "model": "gpt-4o", "input_tokens": 999999, "output_tokens": 1, "cost_micros": 1, "priced": true, "status": "ok"}))
        .execute(&mut db)
        .await
        .unwrap();

    let from_pg: Vec<Value> = reports(&app, &owner).await;
    let pool = app.server.state.pool.clone();
    let clickhouse = ClickHouse::connect(&ch_config(&ch)).await.unwrap();
    while shipper::ship_once(&pool, &clickhouse).await.unwrap() > 0 {}
    let mut config = test_config();
    config.clickhouse_url = Some(ch.url());
    let with_ch = TestApp::spawn_with(app.db.clone(), config).await;
    let from_ch: Vec<Value> = reports(&with_ch, &owner).await;
    for (pg, chr) in from_pg.iter().zip(&from_ch) {
        assert_eq!((pg["source"].as_str(), chr["source"].as_str()), (Some("postgres"), Some("clickhouse")));
        assert_eq!(pg["data"], chr["data"], "group_by {}", pg["group_by"]);
    }
    // What the groups say, read once: 11 calls of this org, named keys.
    let by = |group: &str| from_pg.iter().find(|r| r["group_by"] == group).unwrap()["data"].as_array().unwrap().clone();
    let calls = |rows: &[Value]| rows.iter().map(|r| r["calls"].as_u64().unwrap()).sum::<u64>();
    for group in ["day", "project", "task", "model", "user", "agent"] {
        assert_eq!(calls(&by(group)), 11, "{group}: {:?}", by(group));
    }
    assert!(by("day").len() >= 6, "{:?}", by("day"));
    let keys = |group: &str| by(group).iter().map(|r| r["key"].as_str().unwrap_or("-").to_owned()).collect::<Vec<_>>();
    assert!(keys("project").contains(&"RP".to_owned()) && keys("project").contains(&"QA".to_owned()), "{:?}", keys("project"));
    assert!(keys("task").iter().any(|k| k.starts_with("QA-")), "{:?}", keys("task"));
    assert!(keys("user").contains(&"two@example.com".to_owned()), "{:?}", keys("user"));
    assert!(keys("agent").contains(&"builder-1".to_owned()), "{:?}", keys("agent"));
    let models = by("model");
    let own = models.iter().find(|r| r["key"] == "openai/my-own-model").unwrap();
    assert_eq!((own["calls"].as_u64(), own["unpriced_calls"].as_u64(), own["cost"].as_f64()), (Some(1), Some(1), Some(0.0)));
    let sonnet = models.iter().find(|r| r["key"] == "anthropic/claude-sonnet-4").unwrap();
    assert_eq!((sonnet["calls"].as_u64(), sonnet["errors"].as_u64(), sonnet["cost"].as_f64()), (Some(6), Some(1), Some(0.0945)));
}

/// Every grouping of the last 30 days.
async fn reports(app: &TestApp, token: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for group in ["day", "project", "task", "model", "user", "agent"] {
        let (s, r) = app.get(&format!("/api/v1/orgs/rep/usage?group_by={group}"), token).await;
        assert_eq!(s, 200, "{r}");
        out.push(r);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orgs_own_price_costs_its_calls_and_bad_queries_are_refused() {
    let llm = ScriptedLlm::start(vec![]).await;
    let app = app(&llm, fresh_database().await, None).await;
    let token = app.owner_with_project("price@example.com", "price", "PR").await;
    let (s, set) = app
        .call(reqwest::Method::PUT, "/api/v1/orgs/price/prices", Some(&token), Some(json!({"provider": "openai", "model": "my-model", "input": 1000.0, "output": 2000.0, "cached": 0.0})))
        .await;
    assert_eq!(s, 200, "{set}");
    // The org's price covers the names that start with it, as the built-in ones do.
    assert_eq!(gateway_call(&app, &token, "my-model-2026-12").await, 200);
    let (_, report) = app.get("/api/v1/orgs/price/usage?group_by=model", &token).await;
    let row = &report["data"][0];
    let (tin, tout) = (row["tokens_in"].as_f64().unwrap(), row["tokens_out"].as_f64().unwrap());
    assert!(tin > 0.0, "{report}");
    assert_eq!(row["cost"].as_f64().unwrap(), ((tin * 1000.0 + tout * 2000.0) / 1e6 * 1e6).round() / 1e6, "{report}");
    assert_eq!(row["unpriced_calls"], 0);
    let (_, prices) = app.get("/api/v1/orgs/price/prices", &token).await;
    assert_eq!(prices["data"][0]["source"], "org", "{prices}");
    assert!(prices["data"].as_array().unwrap().iter().any(|p| p["model"] == "claude-sonnet-4" && p["source"] == "built_in"));

    for (query, says) in [
        ("group_by=week", "group_by"),
        ("from=yesterday", "from"),
        ("from=2026-12-02&to=2026-12-01", "before"),
        ("from=2026-01-01&to=2200-01-01", "2106"),
    ] {
        let (s, e) = app.get(&format!("/api/v1/orgs/price/usage?{query}"), &token).await;
        assert_eq!((s.as_u16(), e["error"]["code"].as_str()), (422, Some("invalid_request")), "{query}: {e}");
        assert!(e["error"]["message"].as_str().unwrap().contains(says), "{query}: {e}");
    }
    let (s, e) = app
        .call(reqwest::Method::PUT, "/api/v1/orgs/price/prices", Some(&token), Some(json!({"provider": "openai", "model": "m", "input": -1.0, "output": 0.0, "cached": 0.0})))
        .await;
    assert_eq!(s, 422, "{e}");
}

/// The DDL and the report queries run on current ClickHouse too (26.x, embedded in
/// PyPI's chdb-core, installed by scripts/test.sh), and answer as on 18.16: a row
/// inserted twice counts once, the range's ends hold.
#[tokio::test]
async fn the_tables_and_reports_work_on_current_clickhouse() {
    use kodel_core::usage::UsageGroup;
    use kodel_server::analytics::{clickhouse::MIGRATIONS, usage};
    let python = std::env::var("KODEL_CHDB_PYTHON").unwrap_or_else(|_| "python3".into());
    let from = 1_764_806_400u32; // 2025-12-04 00:00:00 UTC
    let spec = json!({
        "migrations": MIGRATIONS.iter().map(|(_, sql)| *sql).collect::<Vec<_>>(),
        "reports": UsageGroup::ALL.iter().map(|g| (g.as_str().to_owned(), Value::String(usage::clickhouse_sql(*g)))).collect::<serde_json::Map<_, _>>(),
        "org": "org-1", "from": from, "to": from + 2 * 86_400,
    });
    let mut child = tokio::process::Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/chdb_check.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    child.stdin.take().unwrap().write_all(spec.to_string().as_bytes()).await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("No module named 'chdb'"), "chdb-core is missing: scripts/test.sh installs it (KODEL_CHDB_PYTHON={python})");
    assert!(out.status.success(), "{stderr}");
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = |v: &[&str]| json!(v);
    assert_eq!(got["day"], json!([row(&["2025-12-04", "1", "0", "100", "10", "0", "350", "0"]), row(&["2025-12-05", "2", "1", "500", "50", "50", "700", "1"])]));
    assert_eq!(got["model"], json!([row(&["openai/gpt-4o", "2", "1", "300", "30", "50", "1050", "0"]), row(&["openai/mine", "1", "0", "300", "30", "0", "0", "1"])]));
    assert_eq!(got["user"], json!([row(&["", "1", "1", "200", "20", "50", "700", "0"]), row(&["u1", "2", "0", "400", "40", "0", "350", "1"])]));
    for (group, groups) in [("project", 2), ("task", 3), ("agent", 2)] {
        assert_eq!(got[group].as_array().unwrap().len(), groups, "{group}: {got}");
    }
}

/// Budgets on the org, a project and a task: set, listed with their spend, checked for
/// the task's calls (its own and its project's apply; another task's do not), and bad
/// input refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_apply_to_their_scope() {
    use kodel_server::analytics::budgets;
    let app = TestApp::spawn().await;
    let token = app.owner_with_project("bud@example.com", "bud", "BU").await;
    let one = app.create_task(&token, "bud", "BU", "Spend").await;
    let two = app.create_task(&token, "bud", "BU", "Save").await;
    let put = |body: Value| app.call(reqwest::Method::PUT, "/api/v1/orgs/bud/budgets", Some(&token), Some(body));
    assert_eq!(put(json!({"scope": "org", "max_cost": 100.0})).await.0, 200);
    assert_eq!(put(json!({"scope": "project", "project": "BU", "max_tokens": 1000, "period": "total"})).await.0, 200);
    let (s, b) = put(json!({"scope": "task", "task": one["key"], "max_cost": 0.01})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!((b["task"].as_str(), b["max_cost"].as_f64(), b["spent_cost"].as_f64()), (one["key"].as_str(), Some(0.01), Some(0.0)));
    // The same scope and period again replaces it.
    assert_eq!(put(json!({"scope": "org", "max_cost": 200.0})).await.0, 200);
    let (_, list) = app.get("/api/v1/orgs/bud/budgets", &token).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 3, "{list}");
    for (body, status) in [
        (json!({"scope": "org"}), 422),
        (json!({"scope": "project", "max_cost": 1.0}), 422),
        (json!({"scope": "project", "project": "NOPE", "max_cost": 1.0}), 404),
        (json!({"scope": "org", "max_cost": -1.0}), 422),
        (json!({"scope": "org", "project": "BU", "max_cost": 1.0}), 422),
    ] {
        let (s, e) = put(body.clone()).await;
        assert_eq!(s.as_u16(), status, "{body}: {e}");
    }

    let pool = app.server.state.pool.clone();
    let task_id = |t: &Value| {
        let n = t["number"].as_i64().unwrap() as i32;
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM org_bud.tasks WHERE number = $1").bind(n).fetch_one(&pool).await.unwrap() }
    };
    let (t1, t2) = (task_id(&one).await, task_id(&two).await);
    let schema = format!("{}.", kodel_core::OrgSlug::parse("bud").unwrap().quoted_schema());
    assert!(budgets::exceeded(&pool, &schema, Some(t1)).await.unwrap().is_none(), "nothing spent yet");
    // Two cents on the first task: its budget is spent; the second task's calls and
    // the org's go on.
    let mut db = app.org_tx("bud").await;
    let project: Option<uuid::Uuid> = sqlx::query_scalar("SELECT project_id FROM org_bud.tasks WHERE id = $1").bind(t1).fetch_one(&pool).await.unwrap();
    budgets::add_spend(&mut db, project, Some(t1), 20_000, 10).await.unwrap();
    app.server.state.commit(db).await.unwrap();
    let spent = budgets::exceeded(&pool, &schema, Some(t1)).await.unwrap().expect("the task's budget is spent");
    assert_eq!(spent.scope, "task");
    assert!(spent.describe().contains("$0.01 ($0.02 spent)"), "{}", spent.describe());
    assert!(budgets::exceeded(&pool, &schema, Some(t2)).await.unwrap().is_none());
    assert!(budgets::exceeded(&pool, &schema, None).await.unwrap().is_none());
    // 1,000 tokens in all on the project: every task of it stops.
    let mut db = app.org_tx("bud").await;
    budgets::add_spend(&mut db, project, Some(t2), 0, 990).await.unwrap();
    app.server.state.commit(db).await.unwrap();
    let spent = budgets::exceeded(&pool, &schema, Some(t2)).await.unwrap().expect("the project's budget is spent");
    assert_eq!((spent.scope.as_str(), spent.period.as_str()), ("project", "total"));
    let (_, list) = app.get("/api/v1/orgs/bud/budgets", &token).await;
    let project_budget = list["data"].as_array().unwrap().iter().find(|b| b["scope"] == "project").unwrap().clone();
    assert_eq!(project_budget["spent_tokens"], 1000, "{list}");
    let (s, _) = app.delete(&format!("/api/v1/orgs/bud/budgets/{}", project_budget["id"].as_str().unwrap()), &token).await;
    assert_eq!(s, 204);
    assert!(budgets::exceeded(&pool, &schema, Some(t2)).await.unwrap().is_none(), "removed, it holds nothing back");
}

/// A paused job goes on by itself once no budget holds it back (a new month began),
/// through the engine's sweep; while one still does, it stays paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_resumes_a_paused_job_once_its_budget_allows() {
    let app = TestApp::spawn().await;
    let token = app.owner_with_project("sweep@example.com", "sweep", "SW").await;
    let task = app.create_task(&token, "sweep", "SW", "Wait for money").await;
    let (s, job) = app.post("/api/v1/orgs/sweep/jobs", &token, json!({"task": task["key"], "template": "implement-template"})).await;
    assert_eq!(s, 201, "{job}");
    let (s, _) = app.call(reqwest::Method::PUT, "/api/v1/orgs/sweep/budgets", Some(&token), Some(json!({"scope": "task", "task": task["key"], "max_tokens": 0}))).await;
    assert_eq!(s, 200);
    let pool = app.server.state.pool.clone();
    let id: uuid::Uuid = job["id"].as_str().unwrap().parse().unwrap();
    sqlx::query("UPDATE org_sweep.ai_jobs SET state = 'paused', error = 'budget' WHERE id = $1").bind(id).execute(&pool).await.unwrap();
    let state = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, String>("SELECT state FROM org_sweep.ai_jobs WHERE id = $1").bind(id).fetch_one(&pool).await.unwrap()
    };
    kodel_server::engine::background::sweep(&app.server.state).await.unwrap();
    assert_eq!(state(pool.clone()).await, "paused", "the budget still holds it");
    // As at the turn of a month: what holds it back is gone.
    sqlx::query("DELETE FROM org_sweep.budgets").execute(&pool).await.unwrap();
    kodel_server::engine::background::sweep(&app.server.state).await.unwrap();
    assert_eq!(state(pool.clone()).await, "pending");
    let (_, history) = app.get(&format!("/api/v1/orgs/sweep/tasks/{}/history", task["key"].as_str().unwrap()), &token).await;
    assert!(history["data"].as_array().unwrap().iter().any(|e| e["type"] == "job.resumed"), "{history}");
}

/// ClickHouse over HTTPS (its certificate trusted through SSL_CERT_FILE, as the
/// system's roots would): tables made, a batch shipped, a report read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_is_reached_over_https() {
    let ch = ClickHouseServer::start_tls().await;
    // SAFETY: nextest runs each test in a process of its own.
    unsafe { std::env::set_var("SSL_CERT_FILE", ch.cert_file()) };
    let config = ClickHouseConfig { url: ch.https_url().unwrap(), user: None, password: None, database: "kodel".into() };
    let llm = ScriptedLlm::start(vec![]).await;
    let app = app(&llm, fresh_database().await, None).await;
    let token = app.owner_with_project("tls@example.com", "tls", "TL").await;
    assert_eq!(gateway_call(&app, &token, "gpt-4o").await, 200);
    let clickhouse = ClickHouse::connect(&config).await.unwrap();
    assert_eq!(shipper::ship_once(&app.server.state.pool, &clickhouse).await.unwrap(), 1);
    assert_eq!(ch.query("SELECT count() FROM kodel.llm_calls FINAL").await.trim(), "1");
    // A certificate nobody vouches for is refused.
    unsafe { std::env::remove_var("SSL_CERT_FILE") };
    let untrusted = ClickHouse::connect(&config).await;
    assert!(untrusted.is_err(), "a self-signed certificate was taken without being trusted");
}
