//! Where AI work runs: a project's git repositories (modules), the instance templates
//! that describe an agent's workspace, and the agents registry. REST DTOs.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::forge::ForgeKind;

pub const MAX_URL: usize = 2000;
pub const MAX_SETUP_SCRIPT: usize = 100_000;
pub const MAX_PACKAGES: usize = 200;
pub const MAX_ENV: usize = 100;
/// What an instance template's env values read as: they are secrets, write-only. Sent
/// back in an update, it keeps the value stored.
pub const SECRET_MASK: &str = "********";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Module {
    pub id: Uuid,
    /// The project key.
    pub project: String,
    pub name: String,
    pub url: String,
    pub default_branch: String,
    pub path_prefix: String,
    /// Whether credentials are stored (they are never returned).
    pub has_credentials: bool,
    /// Where implement jobs open pull requests: set on the module, or known from the
    /// URL's host (github.com, gitlab.com). None: no pull requests.
    #[serde(default)]
    pub forge: Option<ForgeKind>,
    /// The forge's API base when it is not the usual one (self-hosted forges).
    #[serde(default)]
    pub forge_api_url: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Credentials for a private repository: a token or password, with a user name where
/// the host wants one. Stored sealed; the API never returns them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RepoCredentials {
    #[serde(default)]
    pub username: Option<String>,
    /// A token or password.
    pub secret: String,
}

impl std::fmt::Debug for RepoCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoCredentials").field("username", &self.username).field("secret", &"<hidden>").finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateModule {
    /// The project key.
    pub project: String,
    pub name: String,
    pub url: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(default = "main"))]
    pub default_branch: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub credentials: Option<RepoCredentials>,
    #[serde(default)]
    /// Where implement jobs open pull requests; absent = found from the URL's host.
    pub forge: Option<ForgeKind>,
    #[serde(default)]
    /// The forge's API base when it is not the usual one (self-hosted forges).
    pub forge_api_url: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateModule {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub default_branch: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// New credentials; null removes them.
    #[serde(default, with = "crate::api::double_option", skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Option<RepoCredentials>>,
    /// The forge; null goes back to finding it from the URL.
    #[serde(default, with = "crate::api::double_option", skip_serializing_if = "Option::is_none")]
    pub forge: Option<Option<ForgeKind>>,
    #[serde(default, with = "crate::api::double_option", skip_serializing_if = "Option::is_none")]
    /// The forge's API base; null = the usual one.
    pub forge_api_url: Option<Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InstanceTemplate {
    pub id: Uuid,
    pub name: String,
    /// The image jobs run in (a container on an agent with a Docker Engine), e.g.
    /// `rust:1.90`; none: jobs run under bubblewrap on the agent's own host.
    #[serde(default)]
    pub base_image: Option<String>,
    pub packages: Vec<String>,
    pub setup_script: String,
    /// Names and values; every value reads as `********` (they are write-only secrets).
    pub env: BTreeMap<String, String>,
    /// Whether jobs may reach the network.
    pub network: bool,
    /// CPU cores a job may use (cgroups; agents that cannot apply a limit refuse the job).
    pub cpu_limit: Option<f32>,
    /// Memory a job's processes may use together, in MiB.
    pub memory_mb: Option<i32>,
    /// Processes (and threads) a job may run at once.
    #[serde(default)]
    pub max_processes: Option<i32>,
    /// Docker-in-docker: the job gets a Docker daemon of its own (needs a base image).
    pub dind: bool,
    /// Labels an agent must have to take this project's jobs.
    #[serde(default)]
    pub labels: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An instance template to create (`name` is then required) or a partial update.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InstanceTemplateIn {
    #[serde(default)]
    /// Required on create.
    pub name: Option<String>,
    #[serde(default, with = "crate::api::double_option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 255, value_type = Option<String>))]
    /// The image jobs run in, e.g. `rust:1.90` (a container on an agent with a Docker
    /// Engine); absent or null: jobs run under bubblewrap on the agent's host.
    pub base_image: Option<Option<String>>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 200))]
    pub packages: Option<Vec<String>>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 100000))]
    pub setup_script: Option<String>,
    #[serde(default)]
    /// Names and values (at most 100); sending `********` back keeps the value stored.
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(default = false))]
    /// Whether jobs may reach the network.
    pub network: Option<bool>,
    #[serde(default, with = "crate::api::double_option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0, maximum = 256))]
    /// CPU cores; null removes the limit.
    pub cpu_limit: Option<Option<f32>>,
    #[serde(default, with = "crate::api::double_option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 16, maximum = 1048576))]
    /// MiB; null removes the limit.
    pub memory_mb: Option<Option<i32>>,
    #[serde(default, with = "crate::api::double_option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 8, maximum = 1000000))]
    /// Null removes the limit.
    pub max_processes: Option<Option<i32>>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(default = false))]
    /// Docker-in-docker: the job gets a Docker daemon of its own (needs a base image and
    /// an agent started with --dind-image).
    pub dind: Option<bool>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 32))]
    /// Labels an agent must have to take this project's jobs.
    pub labels: Option<Vec<String>>,
}

/// The label a job gets when its template names a base image: only agents that can
/// run containers offer it (see `protocol::claim_labels`).
pub const CONTAINER_LABEL: &str = "kodel:container";
/// The label a job gets when its template asks for docker-in-docker.
pub const DIND_LABEL: &str = "kodel:dind";
/// Labels of this prefix are Kodel's own: people cannot set them.
pub const RESERVED_LABEL_PREFIX: &str = "kodel:";

impl InstanceTemplate {
    /// The labels an agent must offer to run this template's jobs: its own labels, and
    /// Kodel's for a container and docker-in-docker. The server gives new jobs the
    /// same (`engine::jobs::start`).
    pub fn required_labels(&self) -> Vec<String> {
        let mut labels = self.labels.clone();
        if self.base_image.is_some() {
            labels.push(CONTAINER_LABEL.into());
        }
        if self.dind {
            labels.push(DIND_LABEL.into());
        }
        labels
    }
}

/// Whether `image` reads as a Docker image reference (`[registry/]name[:tag][@digest]`):
/// it goes to the Docker Engine as is.
pub fn valid_image_reference(image: &str) -> bool {
    image.len() <= 255
        && image.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && image.chars().all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c))
        && !image.contains("//")
        && !image.contains("..")
        && !image.ends_with([':', '/', '@'])
}

/// Checks an instance template's fields; the message names the bad one.
pub fn validate_instance_template(t: &InstanceTemplateIn) -> Result<(), String> {
    if let Some(Some(image)) = &t.base_image
        && !valid_image_reference(image.trim())
    {
        return Err(format!("base_image {image:?} is not an image reference: use a name with an optional tag, e.g. rust:1.90 or registry.example.com/team/build:2"));
    }
    if let Some(p) = &t.packages {
        if p.len() > MAX_PACKAGES {
            return Err(format!("at most {MAX_PACKAGES} packages"));
        }
        if let Some(bad) = p.iter().find(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || "+-.:=_~".contains(c))) {
            return Err(format!("package {bad:?} is not a package name"));
        }
    }
    if t.setup_script.as_ref().is_some_and(|s| s.len() > MAX_SETUP_SCRIPT) {
        return Err(format!("setup_script is at most {MAX_SETUP_SCRIPT} bytes"));
    }
    if let Some(env) = &t.env {
        if env.len() > MAX_ENV {
            return Err(format!("at most {MAX_ENV} environment variables"));
        }
        let ok = |k: &str| k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if let Some(bad) = env.keys().find(|k| !ok(k)) {
            return Err(format!("environment variable name {bad:?} is not valid"));
        }
    }
    if let Some(labels) = &t.labels {
        if labels.len() > 32 {
            return Err("at most 32 labels".into());
        }
        if let Some(bad) = labels.iter().find(|l| l.is_empty() || l.len() > 64 || !l.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))) {
            return Err(format!("label {bad:?} must be 1 to 64 letters, digits, '-', '_', '.' or ':'"));
        }
        if let Some(bad) = labels.iter().find(|l| l.starts_with(RESERVED_LABEL_PREFIX)) {
            return Err(format!("label {bad:?}: labels starting with {RESERVED_LABEL_PREFIX} are Kodel's own (a base image or dind asks for them)"));
        }
    }
    if t.cpu_limit.flatten().is_some_and(|c| !(c > 0.0 && c <= 256.0)) {
        return Err("cpu_limit must be between 0 and 256 cores".into());
    }
    if t.memory_mb.flatten().is_some_and(|m| !(16..=1_048_576).contains(&m)) {
        return Err("memory_mb must be between 16 and 1048576".into());
    }
    if t.max_processes.flatten().is_some_and(|m| !(8..=1_000_000).contains(&m)) {
        return Err("max_processes must be between 8 and 1000000".into());
    }
    Ok(())
}

/// What an agent is doing, as the API shows it.
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
enum AgentStatus {
    Online,
    Busy,
    Offline,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Agent {
    pub id: Uuid,
    pub name: String,
    pub labels: Vec<String>,
    pub version: String,
    /// online, busy or offline.
    #[cfg_attr(feature = "openapi", schema(value_type = AgentStatus))]
    pub status: String,
    /// The job it runs (or ran when it went offline).
    #[serde(default)]
    pub current_job: Option<Uuid>,
    /// The task of that job, e.g. KOD-42.
    #[serde(default)]
    pub current_task: Option<String>,
    /// Disk the agent's job workspaces take (kept failed ones included), bytes.
    #[serde(default)]
    pub disk_bytes: Option<i64>,
    /// What it can run beyond bubblewrap: `container` (a Docker Engine answers it),
    /// `dind` (docker-in-docker).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// What it cannot run, and why (`container`, `dind`).
    #[serde(default)]
    pub missing: BTreeMap<String, String>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_print() {
        let c = RepoCredentials { username: Some("bot".into()), secret: "ghp_secret".into() };
        assert!(!format!("{c:?}").contains("ghp_secret"));
    }

    #[test]
    fn instance_templates_are_checked() {
        let mut t = InstanceTemplateIn { packages: Some(vec!["git".into(), "python3.11".into()]), ..Default::default() };
        assert!(validate_instance_template(&t).is_ok());
        t.packages = Some(vec!["git; rm -rf /".into()]);
        assert!(validate_instance_template(&t).unwrap_err().contains("package"));
        t.packages = None;
        t.env = Some([("1BAD".to_string(), "x".to_string())].into());
        assert!(validate_instance_template(&t).unwrap_err().contains("variable"));
        t.env = None;
        t.cpu_limit = Some(Some(0.0));
        assert!(validate_instance_template(&t).is_err());
        t.cpu_limit = None;
        t.labels = Some(vec!["kodel:container".into()]);
        assert!(validate_instance_template(&t).unwrap_err().contains("Kodel's own"));
    }

    #[test]
    fn image_references() {
        for ok in ["debian:12", "rust:1.90-slim", "registry.example.com:5000/team/build:2", "busybox@sha256:abc123", "kodel-test/busybox"] {
            assert!(valid_image_reference(ok), "{ok}");
        }
        for bad in ["", "-rm", "a b", "x;rm", "a//b", "../x", "name:", "$(id)"] {
            assert!(!valid_image_reference(bad), "{bad}");
        }
    }
}
