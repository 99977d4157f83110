//! Forward-only migrations. Shared ones build the `public` schema once; tenant ones are
//! applied to every `org_{slug}` schema. A start with nothing pending costs a constant
//! number of queries, whatever the number of orgs. An advisory lock serialises servers
//! that start together. A tenant migration that fails marks its org (which then answers
//! 503) and the others keep serving.

use kodel_core::OrgSlug;
use sqlx::{Acquire, Executor, PgConnection, PgPool};

/// Key of the advisory lock that serialises migrators (arbitrary, fixed).
const LOCK_KEY: i64 = 0x6b6f_6465_6c01;

pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

macro_rules! migration {
    ($version:literal, $name:literal, $dir:literal) => {
        Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../../../migrations/", $dir, "/", $name, ".sql")),
        }
    };
}

pub const SHARED: &[Migration] = &[migration!(1, "0001_init", "shared"), migration!(2, "0002_spare_schemas", "shared"), migration!(3, "0003_analytics", "shared"), migration!(4, "0004_job_states", "shared"), migration!(5, "0005_web_and_sso", "shared"), migration!(6, "0006_sweep_work", "shared")];
pub const TENANT: &[Migration] = &[migration!(1, "0001_init", "tenant"), migration!(2, "0002_engine", "tenant"), migration!(3, "0003_agents", "tenant"), migration!(4, "0004_project_settings", "tenant"), migration!(5, "0005_repositories", "tenant"), migration!(6, "0006_process_limit", "tenant"), migration!(7, "0007_llm_wire", "tenant"), migration!(8, "0008_model_prices", "tenant"), migration!(9, "0009_budgets", "tenant"), migration!(10, "0010_job_state_counts", "tenant"), migration!(11, "0011_containers", "tenant"), migration!(12, "0012_sweep_work", "tenant")];

pub fn tenant_version() -> i32 {
    TENANT.last().map_or(0, |m| m.version)
}

#[derive(Debug, Default)]
pub struct Report {
    pub shared_applied: usize,
    pub orgs_migrated: usize,
    pub orgs_failed: Vec<String>,
}

/// Applies what is pending. Safe to call from several servers at once.
pub async fn run(pool: &PgPool) -> anyhow::Result<Report> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)").bind(LOCK_KEY).execute(&mut *conn).await?;
    let result = run_locked(&mut conn).await;
    // Unlock even after a failure; a dropped connection would release it too.
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(LOCK_KEY).execute(&mut *conn).await;
    result
}

async fn run_locked(conn: &mut PgConnection) -> anyhow::Result<Report> {
    let mut report = Report::default();
    conn.execute(
        "CREATE TABLE IF NOT EXISTS public._kodel_migrations (
            version integer PRIMARY KEY, name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let applied: i32 =
        sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM public._kodel_migrations")
            .fetch_one(&mut *conn)
            .await?;
    for m in SHARED.iter().filter(|m| m.version > applied) {
        let mut tx = conn.begin().await?;
        tx.execute(m.sql).await.map_err(|e| anyhow::anyhow!("shared migration {}: {e}", m.name))?;
        sqlx::query("INSERT INTO public._kodel_migrations (version, name) VALUES ($1, $2)")
            .bind(m.version)
            .bind(m.name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        report.shared_applied += 1;
        tracing::info!(migration = m.name, "applied shared migration");
    }

    drop_old_spares(conn).await?;
    let behind: Vec<String> = sqlx::query_scalar(
        "SELECT slug FROM orgs WHERE schema_version < $1 AND migration_error IS NULL ORDER BY slug",
    )
    .bind(tenant_version())
    .fetch_all(&mut *conn)
    .await?;
    for slug in behind {
        let Ok(slug) = OrgSlug::parse(&slug) else { continue };
        let mut tx = conn.begin().await?;
        match migrate_tenant(&mut tx, &slug).await {
            Ok(n) => {
                tx.commit().await?;
                report.orgs_migrated += 1;
                tracing::info!(org = %slug, applied = n, "migrated org schema");
            }
            Err(err) => {
                tx.rollback().await?;
                tracing::error!(org = %slug, error = %err, "tenant migration failed; this org is unavailable until it is fixed");
                sqlx::query("UPDATE orgs SET migration_error = $2 WHERE slug = $1")
                    .bind(slug.as_str())
                    .bind(err.to_string())
                    .execute(&mut *conn)
                    .await?;
                report.orgs_failed.push(slug.to_string());
            }
        }
    }
    Ok(report)
}

/// Creates the org's schema if needed and applies its pending tenant migrations, inside
/// the caller's transaction. Returns how many were applied.
pub async fn migrate_tenant(conn: &mut PgConnection, slug: &OrgSlug) -> Result<usize, sqlx::Error> {
    let n = apply_tenant(conn, &slug.quoted_schema()).await?;
    sqlx::query("UPDATE public.orgs SET schema_version = $2, migration_error = NULL WHERE slug = $1")
        .bind(slug.as_str())
        .bind(tenant_version())
        .execute(&mut *conn)
        .await?;
    Ok(n)
}

/// Creates `schema` (quoted) if needed and applies the pending tenant migrations to it.
async fn apply_tenant(conn: &mut PgConnection, schema: &str) -> Result<usize, sqlx::Error> {
    // The schema name is built from a validated slug (or is a spare's) and quoted.
    let ddl = format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}._kodel_migrations (
            version integer PRIMARY KEY, name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now());"
    );
    conn.execute(ddl.as_str()).await?;
    super::scoped::scope(conn, &format!("{schema}, public")).await?;
    let applied: i32 = sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM _kodel_migrations")
        .fetch_one(&mut *conn)
        .await?;
    let mut n = 0;
    for m in TENANT.iter().filter(|m| m.version > applied) {
        conn.execute(m.sql).await?;
        sqlx::query("INSERT INTO _kodel_migrations (version, name) VALUES ($1, $2)")
            .bind(m.version)
            .bind(m.name)
            .execute(&mut *conn)
            .await?;
        n += 1;
    }
    Ok(n)
}

/// Gives the org a spare schema made ahead of time, if one of the current version is
/// ready: a rename instead of every tenant migration. False if none was ready.
pub async fn take_spare(conn: &mut PgConnection, slug: &OrgSlug) -> Result<bool, sqlx::Error> {
    let spare: Option<String> = sqlx::query_scalar(
        "DELETE FROM public.schema_spares WHERE name = (
             SELECT name FROM public.schema_spares WHERE version = $1 ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING name",
    )
    .bind(tenant_version())
    .fetch_optional(&mut *conn)
    .await?;
    // The table's CHECK keeps names to kodel_spare_<hex>, safe to quote and use.
    let Some(spare) = spare else { return Ok(false) };
    conn.execute(format!("ALTER SCHEMA \"{spare}\" RENAME TO {}", slug.quoted_schema()).as_str()).await?;
    sqlx::query("UPDATE public.orgs SET schema_version = $2, migration_error = NULL WHERE slug = $1")
        .bind(slug.as_str())
        .bind(tenant_version())
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

/// Makes spare schemas until `target` of the current version are ready.
pub async fn refill_spares(pool: &PgPool, target: usize) -> Result<usize, sqlx::Error> {
    let mut made = 0;
    loop {
        let ready: i64 = sqlx::query_scalar("SELECT count(*) FROM public.schema_spares WHERE version = $1")
            .bind(tenant_version())
            .fetch_one(pool)
            .await?;
        if ready as usize >= target {
            return Ok(made);
        }
        let name = format!("kodel_spare_{}", uuid::Uuid::new_v4().simple());
        let mut tx = crate::db::begin(pool).await?;
        apply_tenant(&mut tx, &format!("\"{name}\"")).await?;
        sqlx::query("INSERT INTO public.schema_spares (name, version) VALUES ($1, $2)")
            .bind(&name)
            .bind(tenant_version())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        made += 1;
    }
}

/// Drops spares of an older tenant version (a newer server made them obsolete).
async fn drop_old_spares(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let old: Vec<String> = sqlx::query_scalar("DELETE FROM public.schema_spares WHERE version < $1 RETURNING name")
        .bind(tenant_version())
        .fetch_all(&mut *conn)
        .await?;
    for name in old {
        conn.execute(format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE").as_str()).await?;
    }
    Ok(())
}
