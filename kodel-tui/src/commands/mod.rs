//! The CLI commands, one module per noun.

pub mod auth;
pub mod job;
pub mod logs;
pub mod module;
pub mod org;
pub mod project;
pub mod rule;
pub mod task;
pub mod template;
pub mod token;
pub mod up;
pub mod usage;
pub mod workflow;

use crate::cli::{Cli, Command};
use crate::client::Client;
use crate::config::{Credentials, DEFAULT_SERVER, Settings};
use crate::exit::{self, CliError};

/// What every command needs: the client, the settings and the output mode.
pub struct Ctx {
    pub client: Client,
    pub settings: Settings,
    pub json: bool,
    pub org: Option<String>,
}

impl Ctx {
    /// The org to act in, or a usage error that says how to pick one.
    pub fn org(&self) -> Result<String, CliError> {
        self.org.clone().ok_or_else(|| {
            CliError::usage("no organization given").hint("pass --org SLUG, set KODEL_ORG, or run `kodel org use SLUG`")
        })
    }

    /// The project for a task command: the flag/env, else the default.
    pub fn project(&self, given: Option<String>) -> Result<String, CliError> {
        given.or_else(|| self.settings.project.clone()).ok_or_else(|| {
            CliError::usage("no project given")
                .hint("pass --project KEY, set KODEL_PROJECT, or run `kodel project use KEY`")
        })
    }

    pub fn require_login(&self) -> Result<(), CliError> {
        if self.client.credentials().is_some_and(|c| c.bearer().is_some()) {
            Ok(())
        } else {
            Err(CliError::new(exit::AUTH, format!("not logged in to {}", self.client.server))
                .hint("run `kodel login`, or set KODEL_TOKEN"))
        }
    }
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    if let Some(Command::Completions { shell }) = &cli.command {
        clap_complete::generate(*shell, &mut <Cli as clap::CommandFactory>::command(), "kodel", &mut std::io::stdout());
        return Ok(());
    }
    let settings = Settings::load()?;
    let server = cli.server.clone().or_else(|| settings.server.clone()).unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    let server = server.trim_end_matches('/').to_owned();
    let env_token = std::env::var("KODEL_TOKEN").ok().filter(|t| !t.is_empty());
    let creds = match &env_token {
        Some(t) => Some(Credentials { api_token: Some(t.clone()), ..Credentials::default() }),
        None => Credentials::load(&server)?,
    };
    let org = cli.org.clone().or_else(|| settings.org.clone());
    let client = Client::new(&server, creds, env_token.is_some())?;
    let mut ctx = Ctx { client, settings, json: cli.json, org };
    let Some(command) = cli.command else {
        return crate::tui::run(&mut ctx).await;
    };
    let logged_in = ctx.client.credentials().is_some_and(|c| c.bearer().is_some());
    let outcome = match command {
        Command::Login(args) => auth::login(&mut ctx, args).await,
        Command::Logout => auth::logout(&mut ctx).await,
        Command::Register(args) => auth::register(&mut ctx, args).await,
        Command::Whoami => auth::whoami(&mut ctx).await,
        Command::Up(args) => up::run(&mut ctx, args).await,
        Command::Org(cmd) => org::run(&mut ctx, cmd).await,
        Command::Project(cmd) => project::run(&mut ctx, cmd).await,
        Command::Task(cmd) => task::run(&mut ctx, cmd).await,
        Command::Token(cmd) => token::run(&mut ctx, cmd).await,
        Command::Workflow(cmd) => workflow::run(&mut ctx, cmd).await,
        Command::Template(cmd) => template::run(&mut ctx, cmd).await,
        Command::Job(cmd) => job::run(&mut ctx, cmd).await,
        Command::Artifact(cmd) => job::artifact(&mut ctx, cmd).await,
        Command::Rule(cmd) => rule::run(&mut ctx, cmd).await,
        Command::Module(cmd) => module::run(&mut ctx, cmd).await,
        Command::InstanceTemplate(cmd) => module::instance_template(&mut ctx, cmd).await,
        Command::Agent(cmd) => module::agent(&mut ctx, cmd).await,
        Command::Provider(cmd) => module::provider(&mut ctx, cmd).await,
        Command::Usage(args) => usage::report(&mut ctx, args).await,
        Command::Price(cmd) => usage::price(&mut ctx, cmd).await,
        Command::Budget(cmd) => usage::budget(&mut ctx, cmd).await,
        Command::Completions { .. } => Ok(()),
    };
    // "Not logged in" to a server that does not answer at all: the server is the
    // first thing to fix (a mistyped --server, or it is not running).
    match outcome {
        Err(err) if err.code == exit::AUTH && !logged_in => match ctx.client.get::<serde_json::Value>("/healthz").await {
            Err(unreachable) if unreachable.code == exit::UNAVAILABLE => Err(unreachable),
            _ => Err(err),
        },
        other => other,
    }
}
