//! The managed local PostgreSQL: when no DATABASE_URL is given, the server runs its own
//! cluster in `<data dir>/postgres`, reachable only on a unix socket in
//! `<data dir>/run`, and stops it on shutdown. The next start reuses it. As root, the
//! cluster runs as the `postgres` user, because PostgreSQL refuses to run as root.

use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, anyhow, bail};
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{Gid, Uid, User};
use sqlx::postgres::PgConnectOptions;
use tokio::process::Command;

const PORT: u16 = 5432;
const SUPERUSER: &str = "kodel";
const DATABASE: &str = "kodel";

pub struct ManagedPostgres {
    bindir: PathBuf,
    pgdata: PathBuf,
    sockdir: PathBuf,
    run_as: Option<(Uid, Gid)>,
    _lock: Flock<File>,
}

impl ManagedPostgres {
    /// Initialises the cluster on first use, starts it (or adopts one a crashed server
    /// left running) and makes sure the `kodel` database exists.
    pub async fn start(data_dir: &Path) -> anyhow::Result<Self> {
        let bindir = find_bindir()?;
        fs::create_dir_all(data_dir).with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
        let lock = lock_data_dir(data_dir)?;
        let run_as = if nix::unistd::geteuid().is_root() { Some(postgres_user(data_dir)?) } else { None };
        let pgdata = data_dir.join("postgres");
        let sockdir = data_dir.join("run");
        let pg = Self { bindir, pgdata, sockdir, run_as, _lock: lock };

        for dir in [&pg.pgdata, &pg.sockdir] {
            fs::create_dir_all(dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
            pg.give(dir)?;
        }
        if !pg.pgdata.join("PG_VERSION").exists() {
            tracing::info!(dir = %pg.pgdata.display(), "initialising the managed PostgreSQL cluster");
            pg.initdb().await?;
        }
        // Every start, so a crash between initdb and this step cannot leave a cluster
        // listening with its defaults.
        pg.configure()?;
        if pg.pg_ctl(&["status"]).await.is_ok() {
            tracing::info!("managed PostgreSQL already running; adopting it");
        } else {
            let log = data_dir.join("postgres.log");
            File::options().create(true).append(true).open(&log)?;
            pg.give(&log)?;
            let log = log.to_string_lossy().into_owned();
            pg.pg_ctl(&["-w", "-t", "60", "-l", &log, "start"])
                .await
                .with_context(|| format!("managed PostgreSQL did not start; see {log}"))?;
        }
        pg.ensure_database().await?;
        Ok(pg)
    }

    pub fn connect_options(&self) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.sockdir)
            .port(PORT)
            .username(SUPERUSER)
            .database(DATABASE)
    }

    /// Stops the cluster (fast shutdown: open transactions roll back).
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["-w", "-t", "60", "-m", "fast", "stop"]).await
    }

    async fn initdb(&self) -> anyhow::Result<()> {
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--locale=C"])
            .output()
            .await?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// Only a unix socket, in our own directory: nothing listens on the network. Kept
    /// in `kodel.conf`, included from postgresql.conf, rewritten on every start.
    fn configure(&self) -> anyhow::Result<()> {
        let sock = self.sockdir.to_string_lossy().replace('\'', "''");
        let ours = format!(
            "# Written by kodel-server on every start.\nlisten_addresses = ''\nunix_socket_directories = '{sock}'\nport = {PORT}\nmax_connections = 200\n"
        );
        let kodel_conf = self.pgdata.join("kodel.conf");
        fs::write(&kodel_conf, ours)?;
        self.give(&kodel_conf)?;
        let conf = self.pgdata.join("postgresql.conf");
        let text = fs::read_to_string(&conf)?;
        if !text.lines().any(|l| l.trim() == "include 'kodel.conf'") {
            fs::write(&conf, format!("{text}\ninclude 'kodel.conf'\n"))?;
        }
        Ok(())
    }

    async fn ensure_database(&self) -> anyhow::Result<()> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect_with(&self.connect_options().database("postgres")).await?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(DATABASE)
            .fetch_one(&mut conn)
            .await?;
        if !exists {
            sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {DATABASE}").as_str()).await?;
        }
        conn.close().await?;
        Ok(())
    }

    async fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = self.command("pg_ctl").arg("-D").arg(&self.pgdata).args(args).output().await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(anyhow!("pg_ctl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.stdin(Stdio::null()).kill_on_drop(false);
        if let Some(parent) = self.pgdata.parent() {
            cmd.current_dir(parent);
        }
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
        }
        cmd
    }

    fn give(&self, path: &Path) -> anyhow::Result<()> {
        if let Some((uid, gid)) = self.run_as {
            nix::unistd::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("cannot hand {} to the postgres user", path.display()))?;
        }
        Ok(())
    }
}

/// One server per data dir: a second one would stop the first one's database.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<Flock<File>> {
    let file = File::options().create(true).truncate(false).write(true).open(data_dir.join("server.lock"))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
        anyhow!("another kodel-server is already using {}; stop it or pass another --data-dir", data_dir.display())
    })
}

/// As root: the `postgres` user, who must be able to reach the data dir.
fn postgres_user(data_dir: &Path) -> anyhow::Result<(Uid, Gid)> {
    let user = User::from_name("postgres")?.ok_or_else(|| {
        anyhow!("running as root, the managed PostgreSQL needs a 'postgres' user to run as (PostgreSQL refuses root): install postgresql, or run kodel-server as a normal user, or set DATABASE_URL")
    })?;
    // Let the postgres user pass through the data dir to its own subdirectories.
    let mode = fs::metadata(data_dir)?.permissions().mode();
    fs::set_permissions(data_dir, fs::Permissions::from_mode(mode | 0o711))?;
    let abs = fs::canonicalize(data_dir)?;
    for dir in abs.ancestors().skip(1) {
        let meta = fs::metadata(dir)?;
        if meta.uid() != user.uid.as_raw() && meta.mode() & 0o001 == 0 {
            bail!(
                "the managed PostgreSQL runs as user postgres, who cannot enter {}; choose a --data-dir such as /var/lib/kodel",
                dir.display()
            );
        }
    }
    Ok((user.uid, user.gid))
}

/// initdb and pg_ctl: `KODEL_PG_BINDIR` when set (and then only there), else
/// `pg_config --bindir`, the newest /usr/lib/postgresql/N/bin, then PATH.
fn find_bindir() -> anyhow::Result<PathBuf> {
    let has_tools = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    let missing = "PostgreSQL server binaries (initdb, pg_ctl) not found: install them (Debian/Ubuntu: sudo apt-get install postgresql) or set DATABASE_URL";
    if let Some(dir) = std::env::var_os("KODEL_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return if has_tools(&dir) { Ok(dir) } else { Err(anyhow!("{missing} (looked in KODEL_PG_BINDIR={})", dir.display())) };
    }
    if let Ok(out) = std::process::Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_tools(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, d)| has_tools(d))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_tools(&dir) {
                return Ok(dir);
            }
        }
    }
    bail!("{missing}")
}
