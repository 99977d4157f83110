//! The command line: `kodel <noun> <verb>`. Every command takes `--json`.

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "kodel", version, about = "Kodel: a task board shared by people and AI agents", propagate_version = true)]
pub struct Cli {
    /// Server URL [default: the logged-in one, else http://127.0.0.1:7700]
    #[arg(long, global = true, env = "KODEL_SERVER")]
    pub server: Option<String>,

    /// Organization slug [default: the one set with `kodel org use`]
    #[arg(long, global = true, env = "KODEL_ORG")]
    pub org: Option<String>,

    /// Print JSON: the objects the API returns
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in with email and password, or store an API token
    Login(LoginArgs),
    /// Forget the credentials for the server (and end the session)
    Logout,
    /// Create an account and log in
    Register(RegisterArgs),
    /// Show who you are logged in as
    Whoami,
    /// Start a local Kodel server on its own managed PostgreSQL (Ctrl-C stops it)
    Up(UpArgs),
    /// Organizations
    #[command(subcommand)]
    Org(OrgCmd),
    /// Projects
    #[command(subcommand)]
    Project(ProjectCmd),
    /// Tasks
    #[command(subcommand)]
    Task(TaskCmd),
    /// Personal API tokens for scripts
    #[command(subcommand)]
    Token(TokenCmd),
    /// Workflows: statuses, allowed moves, and the AI jobs bound to statuses
    #[command(subcommand)]
    Workflow(WorkflowCmd),
    /// AI job templates (implement-template, code-review-template, qa-template, yours)
    #[command(subcommand)]
    Template(TemplateCmd),
    /// AI jobs: list, show, start, cancel
    #[command(subcommand)]
    Job(JobCmd),
    /// What AI jobs produced: list, show, approve, reject
    #[command(subcommand)]
    Artifact(ArtifactCmd),
    /// Automation rules
    #[command(subcommand)]
    Rule(RuleCmd),
    /// Git repositories of a project
    #[command(subcommand)]
    Module(ModuleCmd),
    /// Instance templates: what a job's workspace is built from
    #[command(subcommand)]
    InstanceTemplate(InstanceTemplateCmd),
    /// Agents that have connected to the org
    #[command(subcommand)]
    Agent(AgentCmd),
    /// The org's own LLM provider keys (org admins)
    #[command(subcommand)]
    Provider(ProviderCmd),
    /// LLM calls, tokens and cost of the org: kodel usage --by model --from 2026-12-01
    Usage(UsageArgs),
    /// The model prices costs are worked out with (org admins set the org's own)
    #[command(subcommand)]
    Price(PriceCmd),
    /// Spending limits on LLM calls of the org, a project or a task (org admins set them)
    #[command(subcommand)]
    Budget(BudgetCmd),
    /// Print shell completions: kodel completions bash > ~/.local/share/bash-completion/completions/kodel
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    /// How to group the calls
    #[arg(long, default_value = "day", value_parser = ["day", "project", "task", "model", "user", "agent"])]
    pub by: String,
    /// Start: a date (2026-12-01, midnight UTC) or an RFC 3339 time; default 30 days ago
    #[arg(long)]
    pub from: Option<String>,
    /// End (not included); default now
    #[arg(long)]
    pub to: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum BudgetCmd {
    /// The org's budgets and what each has spent this period
    List,
    /// Set a budget (replacing the one of the same scope and period):
    /// kodel budget set --project KOD --cost 50 --period month
    Set {
        /// A project's budget (its key); with neither --project nor --task, the org's
        #[arg(long, conflicts_with = "task")]
        project: Option<String>,
        /// A task's budget (its key, KOD-42)
        #[arg(long)]
        task: Option<String>,
        /// month (calendar month, UTC) or total
        #[arg(long, default_value = "month", value_parser = ["month", "total"])]
        period: String,
        /// Most US dollars the calls may cost
        #[arg(long, required_unless_present = "tokens")]
        cost: Option<f64>,
        /// Most tokens the calls may use (in and out)
        #[arg(long)]
        tokens: Option<i64>,
    },
    /// Remove a budget (its id, from kodel budget list)
    Remove { id: String },
}

#[derive(Debug, Subcommand)]
pub enum PriceCmd {
    /// The org's own prices, then the built-in ones (US dollars per million tokens)
    List,
    /// Set the org's price of a model: kodel price set openai gpt-4o --input 2.5 --output 10 --cached 1.25
    Set {
        provider: String,
        model: String,
        /// Dollars per million input tokens
        #[arg(long)]
        input: f64,
        /// Dollars per million output tokens
        #[arg(long)]
        output: f64,
        /// Dollars per million input tokens read from the provider's cache (default: --input)
        #[arg(long)]
        cached: Option<f64>,
    },
    /// Remove the org's price of a model (the built-in one applies again)
    Unset { provider: String, model: String },
}

#[derive(Debug, Subcommand)]
pub enum ProviderCmd {
    /// The org's provider settings (keys are never shown)
    List,
    /// Set the org's key (from stdin) and/or base URL for openai, anthropic, openrouter or ollama
    Set {
        provider: String,
        /// Read the API key from stdin: echo $KEY | kodel provider set openai --key-stdin
        #[arg(long)]
        key_stdin: bool,
        #[arg(long)]
        base_url: Option<String>,
        /// How to speak to the server where they differ, replacing what was set:
        /// `stream=off,max_tokens_field=max_tokens,tool_choice=off` ("" for the defaults)
        #[arg(long, value_parser = kodel_core::llm::WireSettings::parse)]
        wire: Option<kodel_core::llm::WireSettings>,
    },
    /// Forget the org's settings for a provider (the server's are used again)
    Remove { provider: String },
}

#[derive(Debug, Subcommand)]
pub enum WorkflowCmd {
    /// List the org's workflows
    List,
    /// Show a workflow (by name or id): statuses, moves, bindings
    Show { workflow: String },
    /// Create a workflow from a JSON definition, or copy a built-in template
    Create {
        /// JSON file with {"name", "statuses", "transitions"} (- for stdin)
        #[arg(long, conflicts_with_all = ["name", "from_template"], required_unless_present = "from_template")]
        file: Option<String>,
        /// Name of the copy (with --from-template)
        #[arg(long, requires = "from_template")]
        name: Option<String>,
        /// software-development or kanban
        #[arg(long, requires = "name")]
        from_template: Option<String>,
    },
    /// Replace a workflow's definition (JSON file, - for stdin); removed statuses that
    /// hold tasks need "moves": {"Old": "New"}
    Edit {
        workflow: String,
        #[arg(long)]
        file: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TemplateCmd {
    /// List job templates
    List,
    /// Show one job template
    Show { name: String },
    /// Create a job template
    Create(TemplateArgs),
    /// Change a job template (only the options given)
    Update(TemplateArgs),
    /// Delete a job template of your own (built-ins can be edited, not deleted)
    Delete { name: String },
}

#[derive(Debug, Args)]
pub struct TemplateArgs {
    pub name: String,
    /// implement, review, qa or custom (create only)
    #[arg(long)]
    pub kind: Option<String>,
    /// The prompt text, or - to read it from stdin
    #[arg(long)]
    pub prompt: Option<String>,
    /// provider/model, e.g. openai/gpt-4.1-mini
    #[arg(long)]
    pub model: Option<String>,
    /// Comma-separated: read_file,write_file,edit_file,bash,glob,grep
    #[arg(long, value_delimiter = ',')]
    pub tools: Option<Vec<String>>,
    #[arg(long)]
    pub max_steps: Option<i32>,
    /// Seconds
    #[arg(long)]
    pub time_limit: Option<i32>,
    /// Most tokens one job may spend
    #[arg(long)]
    pub budget_tokens: Option<i64>,
}

#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// List jobs, newest first
    List {
        /// Only this task's jobs (KEY-n)
        #[arg(long)]
        task: Option<String>,
        /// pending, running, paused, succeeded, failed or cancelled
        #[arg(long)]
        status: Option<String>,
    },
    /// Show one job
    Show { id: String },
    /// Start a job on a task from a template
    Start {
        task: String,
        #[arg(long)]
        template: String,
    },
    /// Cancel a pending, running or paused job
    Cancel { id: String },
    /// Queue a paused job again (paused when a budget was spent: raise it first)
    Resume { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ArtifactCmd {
    /// List artifacts, newest first
    List {
        #[arg(long)]
        task: Option<String>,
        /// pending, approved or rejected
        #[arg(long)]
        status: Option<String>,
    },
    /// Show one artifact with its content
    Show { id: String },
    /// Approve: the task moves on to the binding's next status
    Approve {
        id: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject: the task goes back, with the comment on it
    Reject {
        id: String,
        /// Why (or - to read it from stdin)
        #[arg(long)]
        comment: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RuleCmd {
    /// List rules (org-wide ones and those of projects you are in)
    List {
        #[arg(long, env = "KODEL_PROJECT")]
        project: Option<String>,
    },
    /// Show one rule
    Show { id: String },
    /// Create a rule from JSON: {"name", "trigger", "conditions", "match", "actions"}
    Create {
        /// JSON file, or - for stdin
        #[arg(long)]
        file: String,
        /// The project (default: the JSON's "project"; --org-wide for none)
        #[arg(long, conflicts_with = "org_wide")]
        project: Option<String>,
        /// A rule for every project of the org
        #[arg(long)]
        org_wide: bool,
        /// Record what the rule would do without doing it
        #[arg(long)]
        dry_run: bool,
    },
    /// Change a rule: the JSON gives the fields to replace (name, trigger, conditions, match, actions, dry_run)
    Update {
        id: String,
        #[arg(long)]
        file: String,
    },
    Enable { id: String },
    Disable { id: String },
    Delete { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ModuleCmd {
    /// List a project's modules
    List {
        #[arg(long, env = "KODEL_PROJECT")]
        project: Option<String>,
    },
    /// Add a git repository to a project
    Add {
        name: String,
        url: String,
        #[arg(long, env = "KODEL_PROJECT")]
        project: Option<String>,
        #[arg(long, default_value = "main")]
        branch: String,
        /// Only this directory of the repository
        #[arg(long)]
        path_prefix: Option<String>,
        /// User name for the credentials
        #[arg(long)]
        username: Option<String>,
        /// Read a token or password for the repository from stdin (never an argument);
        /// on GitHub and GitLab it also opens the pull requests
        #[arg(long)]
        secret_stdin: bool,
        /// Where pull requests go, for a self-hosted forge (github.com and gitlab.com
        /// are known from the URL)
        #[arg(long, value_parser = ["github", "gitlab"])]
        forge: Option<String>,
        /// The forge's API base, when not the usual one (https://HOST/api/v3 or /api/v4)
        #[arg(long)]
        forge_api_url: Option<String>,
    },
    /// Change a module's URL, branch, path prefix or credentials
    Update {
        id: String,
        #[arg(long)]
        url: Option<String>,
        #[arg(long)]
        branch: Option<String>,
        #[arg(long)]
        path_prefix: Option<String>,
        #[arg(long)]
        username: Option<String>,
        /// Read a new token or password from stdin
        #[arg(long, conflicts_with = "no_credentials")]
        secret_stdin: bool,
        /// Remove the stored credentials
        #[arg(long)]
        no_credentials: bool,
        /// github, gitlab, or auto (known from the URL)
        #[arg(long, value_parser = ["github", "gitlab", "auto"])]
        forge: Option<String>,
        #[arg(long)]
        forge_api_url: Option<String>,
    },
    /// Remove a module
    Remove { id: String },
}

#[derive(Debug, Subcommand)]
pub enum InstanceTemplateCmd {
    List,
    /// Show one, with the agents that can run its jobs now
    Show { name: String },
    /// Create one from a JSON file (- reads stdin); its fields are checked before it is sent
    ///
    /// The fields (only "name" is required):
    ///
    ///   name           the template's name
    ///   base_image     the image jobs run in, e.g. "rust:1.90": each job gets a container
    ///                  of its own on an agent with a Docker Engine. Without it, jobs run
    ///                  under bubblewrap on the agent's host.
    ///   packages       packages installed into the image (apt-get, apk, dnf or yum,
    ///                  whichever the base image has); under bubblewrap: not installed
    ///   setup_script   a script run as root when the image is built (the image is
    ///                  cached by a hash of base image, packages and script); under
    ///                  bubblewrap: run in each job's workspace after the clone
    ///   env            {"NAME": "value"}: the job's commands get them (write-only
    ///                  secrets: they read back as ********)
    ///   network        true: the job's commands may reach the network (default false)
    ///   cpu_limit      CPU cores, e.g. 1.5
    ///   memory_mb      memory in MiB; a job that goes over fails, saying so
    ///   max_processes  processes at once (containers default to 4096)
    ///   dind           true: the job gets a Docker daemon of its own (needs base_image
    ///                  and an agent started with --dind-image)
    ///   labels         ["gpu"]: only agents with these labels take the jobs
    ///
    /// Example: {"name": "rust", "base_image": "rust:1.90", "packages": ["git"],
    ///           "memory_mb": 4096, "cpu_limit": 2}
    #[command(verbatim_doc_comment)]
    Create {
        #[arg(long)]
        file: String,
    },
    /// Change an instance template: the JSON gives the fields to replace (null removes
    /// base_image, cpu_limit, memory_mb or max_processes)
    Update {
        name: String,
        #[arg(long)]
        file: String,
    },
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// List the org's agents: status, labels, current job, last seen
    List,
    /// Agent enrollment tokens (org admins)
    #[command(subcommand)]
    Token(AgentTokenCmd),
}

#[derive(Debug, Subcommand)]
pub enum AgentTokenCmd {
    /// Create a token for `kodel-agent --token` (printed once)
    Create {
        name: String,
        /// RFC 3339 time after which the token stops working
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// List the org's live agent tokens
    List,
    /// Revoke a token; agents using it are disconnected
    Revoke { id: String },
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Email (asked for when absent)
    #[arg(long)]
    pub email: Option<String>,
    /// Read the password from the first line of stdin instead of a prompt
    #[arg(long, conflicts_with = "token")]
    pub password_stdin: bool,
    /// Store this API token (`kodel_pat_...`) instead of logging in with a password
    #[arg(long)]
    pub token: Option<String>,
    /// Sign in with the server's identity provider: prints a URL and a code to enter
    /// there (from any browser, so it works over ssh), then waits
    #[arg(long, conflicts_with_all = ["token", "email", "password_stdin"])]
    pub sso: bool,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address for the server
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: String,
    /// Where the server keeps its database [default: kodel-server's]
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    /// Run the stack headless, without opening the TUI (Ctrl-C stops it)
    #[arg(long)]
    pub no_tui: bool,
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    #[arg(long)]
    pub email: String,
    /// Your display name
    #[arg(long)]
    pub name: String,
    /// Read the password from the first line of stdin instead of a prompt
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub enum OrgCmd {
    /// Create an organization; you become its owner
    Create {
        /// a-z, 0-9 and _, 2-40 characters, starting with a letter
        slug: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// List your organizations
    List,
    /// Make an organization the default for later commands
    Use { slug: String },
    /// Organization members
    #[command(subcommand)]
    Member(MemberCmd),
}

#[derive(Debug, Subcommand)]
pub enum MemberCmd {
    /// Add a registered user by email
    Add {
        email: String,
        /// owner, admin or member
        #[arg(long, default_value = "member")]
        role: String,
    },
    /// List members
    List,
    /// Change a member's role
    Set { email: String, role: String },
    /// Remove a member
    Remove { email: String },
}

#[derive(Debug, Subcommand)]
pub enum ProjectCmd {
    /// Create a project
    Create {
        /// Like KOD: 2-10 characters A-Z and 0-9
        key: String,
        #[arg(long)]
        name: String,
        /// Text, or - to read it from stdin
        #[arg(long)]
        description: Option<String>,
        /// kanban (default), software-development, or an org workflow's name or id
        #[arg(long)]
        workflow: Option<String>,
    },
    /// Change a project's name, description, instance template or job settings
    Update {
        key: String,
        #[arg(long)]
        name: Option<String>,
        /// Text, or - to read it from stdin
        #[arg(long)]
        description: Option<String>,
        /// An instance template's name, or `none` to detach it
        #[arg(long)]
        instance_template: Option<String>,
        /// The command QA jobs run, e.g. "cargo test" (`none` clears it)
        #[arg(long)]
        test_command: Option<String>,
        /// What review jobs check: text, or - to read it from stdin (`none` clears it)
        #[arg(long)]
        review_rules: Option<String>,
    },
    /// List projects you can see
    List,
    /// Show a project and its workflow
    Show { key: String },
    /// Make a project the default for task commands
    Use { key: String },
    /// Give an org member a role in the project
    AddMember {
        key: String,
        email: String,
        /// admin, tech_lead, developer, reviewer or viewer
        #[arg(long, default_value = "developer")]
        role: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TaskCmd {
    /// Create a task; prints its key
    Create(TaskCreate),
    /// List tasks of a project
    List(TaskList),
    /// Show one task
    Show { key: String },
    /// Change fields of a task
    Update(TaskUpdate),
    /// Move a task to another status
    Move {
        key: String,
        /// The target status, e.g. "In Progress" (case does not matter)
        status: String,
    },
    /// Comment on a task (the text from stdin when absent or -)
    Comment { key: String, body: Option<String> },
    /// List a task's comments
    Comments { key: String },
    /// Print a task's events and its agent's work as text (NDJSON with --json)
    Logs {
        key: String,
        /// Keep following: new events and the agent's live output, until Ctrl-C
        #[arg(short, long)]
        follow: bool,
        /// Only events after this one (the per-task number, as printed with --json's "seq")
        #[arg(long)]
        since: Option<i32>,
    },
}

#[derive(Debug, Args)]
pub struct TaskCreate {
    /// Title (the first positional argument works too)
    #[arg(long, required_unless_present = "title_arg")]
    pub title: Option<String>,
    #[arg(conflicts_with = "title", hide = true)]
    pub title_arg: Option<String>,
    /// Project key [default: KODEL_PROJECT or `kodel project use`]
    #[arg(long, short, env = "KODEL_PROJECT")]
    pub project: Option<String>,
    /// Text, or - to read it from stdin
    #[arg(long, short)]
    pub description: Option<String>,
    #[arg(long, value_parser = PRIORITIES)]
    pub priority: Option<String>,
    /// A label (repeat for more)
    #[arg(long = "label", short)]
    pub labels: Vec<String>,
    /// An org member's email
    #[arg(long)]
    pub assignee: Option<String>,
    /// The starting status [default: the workflow's first]
    #[arg(long)]
    pub status: Option<String>,
}

/// A task's priorities, offered (and checked) by the command line.
const PRIORITIES: [&str; 5] = ["none", "low", "medium", "high", "urgent"];

#[derive(Debug, Args)]
pub struct TaskList {
    #[arg(long, short, env = "KODEL_PROJECT")]
    pub project: Option<String>,
    #[arg(long)]
    pub status: Option<String>,
    /// An email, `me` or `none`
    #[arg(long)]
    pub assignee: Option<String>,
    #[arg(long)]
    pub label: Option<String>,
    /// Text to find in title or description
    #[arg(long, short = 'q')]
    pub search: Option<String>,
    /// Include archived tasks
    #[arg(long)]
    pub archived: bool,
    /// Tasks per page (1-200)
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Follow the cursor through every page
    #[arg(long)]
    pub all: bool,
    /// Start after this cursor (from a previous page's next_cursor)
    #[arg(long)]
    pub cursor: Option<String>,
}

#[derive(Debug, Args)]
pub struct TaskUpdate {
    pub key: String,
    #[arg(long)]
    pub title: Option<String>,
    /// Text, or - to read it from stdin
    #[arg(long, short)]
    pub description: Option<String>,
    #[arg(long, value_parser = PRIORITIES)]
    pub priority: Option<String>,
    /// Replace the labels (repeat for more)
    #[arg(long = "label", short)]
    pub labels: Vec<String>,
    /// Remove every label
    #[arg(long, conflicts_with = "labels")]
    pub clear_labels: bool,
    #[arg(long, conflicts_with = "unassign")]
    pub assignee: Option<String>,
    #[arg(long)]
    pub unassign: bool,
    #[arg(long, conflicts_with = "unarchive")]
    pub archive: bool,
    #[arg(long)]
    pub unarchive: bool,
    /// Fail with exit code 5 unless the task is at this version [default: the current one]
    #[arg(long)]
    pub expect_version: Option<i32>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token; it is printed once
    Create {
        name: String,
        /// RFC 3339 time, e.g. 2027-01-01T00:00:00Z
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// List your tokens
    List,
    /// Revoke a token by id
    Revoke { id: String },
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
