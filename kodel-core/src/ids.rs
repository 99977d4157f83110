//! Names that reach SQL or URLs, validated once at the edge.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a name was refused; the message is shown to users as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidName(pub String);

/// An organization slug: `^[a-z][a-z0-9_]{1,39}$`. Its schema is `org_{slug}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OrgSlug(String);

impl OrgSlug {
    pub const MAX_LEN: usize = 40;

    pub fn parse(s: &str) -> Result<Self, InvalidName> {
        let ok = (2..=Self::MAX_LEN).contains(&s.len())
            && s.as_bytes()[0].is_ascii_lowercase()
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidName(format!(
                "invalid org slug {s:?}: use 2-40 characters a-z, 0-9 and _, starting with a letter"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The PostgreSQL schema that holds this org's data (unquoted name).
    pub fn schema(&self) -> String {
        format!("org_{}", self.0)
    }

    /// The value for `set_config('search_path', ..)`: the schema quoted as an
    /// identifier, then `public`. Safe because the slug alphabet has no quote.
    pub fn search_path(&self) -> String {
        format!("{}, public", self.quoted_schema())
    }

    /// The schema quoted as an identifier, for the few statements that name it (the
    /// job claim, the background sweep). Safe for the same reason.
    pub fn quoted_schema(&self) -> String {
        format!("\"org_{}\"", self.0)
    }
}

impl fmt::Display for OrgSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for OrgSlug {
    type Error = InvalidName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<OrgSlug> for String {
    fn from(s: OrgSlug) -> Self {
        s.0
    }
}

impl FromStr for OrgSlug {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A project key such as `KOD`: `^[A-Z][A-Z0-9]{1,9}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProjectKey(String);

impl ProjectKey {
    pub fn parse(s: &str) -> Result<Self, InvalidName> {
        let ok = (2..=10).contains(&s.len())
            && s.as_bytes()[0].is_ascii_uppercase()
            && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidName(format!(
                "invalid project key {s:?}: use 2-10 characters A-Z and 0-9, starting with a letter"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ProjectKey {
    type Error = InvalidName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<ProjectKey> for String {
    fn from(k: ProjectKey) -> Self {
        k.0
    }
}

/// A task key such as `KOD-42`: a project key and the task's number in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskKey {
    pub project: ProjectKey,
    pub number: i32,
}

impl TaskKey {
    pub fn parse(s: &str) -> Result<Self, InvalidName> {
        let bad = || InvalidName(format!("invalid task key {s:?}: expected PROJECT-NUMBER, like KOD-42"));
        let (project, number) = s.rsplit_once('-').ok_or_else(bad)?;
        let project = ProjectKey::parse(project).map_err(|_| bad())?;
        if number.is_empty() || number.len() > 9 || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let number: i32 = number.parse().map_err(|_| bad())?;
        if number < 1 {
            return Err(bad());
        }
        Ok(Self { project, number })
    }
}

impl fmt::Display for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.project, self.number)
    }
}

impl FromStr for TaskKey {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for ok in ["ab", "acme", "a_1", "x23456789012345678901234567890123456789"] {
            assert!(OrgSlug::parse(ok).is_ok(), "{ok}");
        }
        let forty_one = format!("a{}", "b".repeat(40));
        for bad in [
            "", "a", "Acme", "1abc", "_abc", "a-b", "org_x;drop", "a\"b", "a'b", "ünï", "a b",
            forty_one.as_str(), "acme\n",
        ] {
            assert!(OrgSlug::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(OrgSlug::parse("acme").unwrap().search_path(), "\"org_acme\", public");
    }

    #[test]
    fn task_keys() {
        let k = TaskKey::parse("KOD-42").unwrap();
        assert_eq!((k.project.as_str(), k.number), ("KOD", 42));
        assert_eq!(k.to_string(), "KOD-42");
        for bad in ["KOD", "KOD-", "KOD-0", "kod-1", "KOD-1a", "KOD--1", "-1", "KOD-9999999999", "KOD-+1"] {
            assert!(TaskKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn project_keys() {
        assert!(ProjectKey::parse("KOD").is_ok());
        assert!(ProjectKey::parse("K2").is_ok());
        for bad in ["K", "kod", "2KO", "KOD-1", "ABCDEFGHIJK"] {
            assert!(ProjectKey::parse(bad).is_err(), "{bad}");
        }
    }
}
