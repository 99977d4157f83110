//! Where a module's pull requests go: GitHub or GitLab, found from the clone URL (or
//! set on the module for self-hosted forges), and the branch a task's work lives on.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ForgeKind {
    Github,
    Gitlab,
}

impl ForgeKind {
    pub fn parse(s: &str) -> Option<ForgeKind> {
        match s {
            "github" => Some(ForgeKind::Github),
            "gitlab" => Some(ForgeKind::Gitlab),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ForgeKind::Github => "github",
            ForgeKind::Gitlab => "gitlab",
        }
    }
}

/// Where an agent opens a module's pull requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forge {
    pub kind: ForgeKind,
    /// The REST API's base, e.g. https://api.github.com or https://gitlab.com/api/v4.
    pub api_url: String,
    /// The repository on the forge: `owner/name` (GitHub) or `group/sub/name` (GitLab).
    pub repo: String,
}

/// The host and path of a clone URL (`https://host/a/b.git`, `git@host:a/b.git`,
/// `ssh://git@host:22/a/b`), without user, port or `.git`.
fn host_and_path(url: &str) -> Option<(String, String, String)> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s.to_owned(), r),
        None => {
            // scp-like: user@host:path
            let (host, path) = url.split_once(':')?;
            let host = host.rsplit('@').next()?;
            return Some(("https".into(), host.to_lowercase(), trim_path(path)?));
        }
    };
    let (authority, path) = rest.split_once('/')?;
    let host = authority.rsplit('@').next()?;
    Some((scheme, host.to_lowercase(), trim_path(path)?))
}

fn trim_path(path: &str) -> Option<String> {
    let p = path.trim_matches('/');
    let p = p.strip_suffix(".git").unwrap_or(p);
    (!p.is_empty()).then(|| p.to_owned())
}

/// The forge of a module: `kind` when the module names one, else github.com and
/// gitlab.com are known by their host. `api_url` overrides the API's address.
pub fn forge_for(url: &str, kind: Option<ForgeKind>, api_url: Option<&str>) -> Option<Forge> {
    let (scheme, host, path) = host_and_path(url)?;
    let bare_host = host.split(':').next().unwrap_or(&host).to_owned();
    let kind = kind.or(match bare_host.as_str() {
        "github.com" => Some(ForgeKind::Github),
        "gitlab.com" => Some(ForgeKind::Gitlab),
        _ => None,
    })?;
    let web = if scheme == "http" || scheme == "https" { format!("{scheme}://{host}") } else { format!("https://{bare_host}") };
    let api_url = match api_url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => match (kind, bare_host.as_str()) {
            (ForgeKind::Github, "github.com") => "https://api.github.com".to_owned(),
            (ForgeKind::Github, _) => format!("{web}/api/v3"),
            (ForgeKind::Gitlab, _) => format!("{web}/api/v4"),
        },
    };
    let repo = match kind {
        // GitHub repositories are always owner/name.
        ForgeKind::Github => {
            let parts: Vec<&str> = path.split('/').collect();
            if parts.len() < 2 {
                return None;
            }
            parts[parts.len() - 2..].join("/")
        }
        ForgeKind::Gitlab => path,
    };
    Some(Forge { kind, api_url, repo })
}

/// The branch a task's work lives on: `kodel/<KEY>-<slug of the title>`, e.g.
/// `kodel/KOD-42-add-dark-mode`. The slug keeps at most 40 characters.
pub fn task_branch(key: &str, title: &str) -> String {
    let mut slug = String::new();
    for c in title.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
        if slug.len() >= 40 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() { format!("kodel/{key}") } else { format!("kodel/{key}-{slug}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_are_found_from_the_url() {
        let f = forge_for("https://github.com/acme/widget.git", None, None).unwrap();
        assert_eq!(f, Forge { kind: ForgeKind::Github, api_url: "https://api.github.com".into(), repo: "acme/widget".into() });
        let f = forge_for("git@gitlab.com:acme/tools/widget.git", None, None).unwrap();
        assert_eq!(f, Forge { kind: ForgeKind::Gitlab, api_url: "https://gitlab.com/api/v4".into(), repo: "acme/tools/widget".into() });
        assert_eq!(forge_for("https://git.example.com/acme/widget.git", None, None), None);
        assert_eq!(forge_for("file:///srv/git/widget.git", None, None), None);
    }

    #[test]
    fn self_hosted_forges_are_named_on_the_module() {
        let f = forge_for("http://127.0.0.1:8080/acme/widget.git", Some(ForgeKind::Github), None).unwrap();
        assert_eq!(f.api_url, "http://127.0.0.1:8080/api/v3");
        assert_eq!(f.repo, "acme/widget");
        let f = forge_for("ssh://git@git.corp:2222/team/app", Some(ForgeKind::Gitlab), Some("https://git.corp/api/v4/")).unwrap();
        assert_eq!(f.api_url, "https://git.corp/api/v4");
        assert_eq!(f.repo, "team/app");
    }

    #[test]
    fn branch_names_are_safe_slugs() {
        assert_eq!(task_branch("KOD-42", "Add dark mode!"), "kodel/KOD-42-add-dark-mode");
        assert_eq!(task_branch("KOD-1", "  Ünïcode & «quotes» / slashes.. "), "kodel/KOD-1-n-code-quotes-slashes");
        assert_eq!(task_branch("KOD-2", "???"), "kodel/KOD-2");
        assert!(task_branch("KOD-3", &"word ".repeat(50)).len() <= "kodel/KOD-3-".len() + 40);
    }
}
