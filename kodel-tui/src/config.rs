//! Settings (`config.json`: server, default org and project) and credentials. The
//! credentials go to the OS keyring (Secret Service) when one answers, else to
//! `credentials.json` with mode 0600 (ssh sessions, CI, containers). Environment
//! variables KODEL_SERVER, KODEL_TOKEN, KODEL_ORG and KODEL_PROJECT win over both, so
//! scripts need no login step. KODEL_CONFIG_DIR moves the directory.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::exit::{CliError, FAILURE};

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7700";
const KEYRING_SERVICE: &str = "kodel";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Settings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The org and project the TUI showed last: it opens there again. Kept apart from
    /// `org` and `project`, so browsing in the TUI does not change what the CLI's
    /// commands act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tui_org: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tui_project: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Credentials {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// A personal API token given with `kodel login --token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_token: Option<String>,
}

/// Where credentials ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    Keyring,
    File(PathBuf),
}

pub fn dir() -> Result<PathBuf, CliError> {
    if let Some(d) = std::env::var_os("KODEL_CONFIG_DIR") {
        return Ok(PathBuf::from(d));
    }
    directories::ProjectDirs::from("dev", "kodel", "kodel")
        .map(|d| d.config_dir().to_path_buf())
        .ok_or_else(|| CliError::new(FAILURE, "cannot find a home directory; set KODEL_CONFIG_DIR"))
}

fn ensure_dir() -> Result<PathBuf, CliError> {
    let d = dir()?;
    fs::create_dir_all(&d).map_err(|e| CliError::new(FAILURE, format!("cannot create {}: {e}", d.display())))?;
    fs::set_permissions(&d, fs::Permissions::from_mode(0o700))?;
    Ok(d)
}

/// Writes a file readable by its owner only, atomically (temp file + rename).
fn write_private(path: &PathBuf, text: &str) -> Result<(), CliError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
    fs::rename(&tmp, path)?;
    Ok(())
}

impl Settings {
    pub fn load() -> Result<Self, CliError> {
        let path = dir()?.join("config.json");
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| CliError::new(FAILURE, format!("{} is not valid: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn save(&self) -> Result<(), CliError> {
        let path = ensure_dir()?.join("config.json");
        write_private(&path, &serde_json::to_string_pretty(self).unwrap_or_default())
    }
}

fn keyring_available() -> bool {
    std::env::var_os("KODEL_NO_KEYRING").is_none() && std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some()
}

fn keyring_entry(server: &str) -> Option<keyring::Entry> {
    keyring_available().then(|| keyring::Entry::new(KEYRING_SERVICE, server).ok()).flatten()
}

type CredentialFile = BTreeMap<String, Credentials>;

fn credentials_path() -> Result<PathBuf, CliError> {
    Ok(dir()?.join("credentials.json"))
}

fn read_file() -> Result<CredentialFile, CliError> {
    let path = credentials_path()?;
    match fs::read_to_string(&path) {
        Ok(text) => Ok(serde_json::from_str(&text).unwrap_or_default()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CredentialFile::new()),
        Err(e) => Err(e.into()),
    }
}

fn write_file(all: &CredentialFile) -> Result<PathBuf, CliError> {
    let path = ensure_dir()?.join("credentials.json");
    if all.is_empty() {
        let _ = fs::remove_file(&path);
    } else {
        write_private(&path, &serde_json::to_string_pretty(all).unwrap_or_default())?;
    }
    Ok(path)
}

impl Credentials {
    /// Credentials for a server: the keyring first, then the file.
    pub fn load(server: &str) -> Result<Option<Self>, CliError> {
        if let Some(entry) = keyring_entry(server)
            && let Ok(secret) = entry.get_password()
            && let Ok(c) = serde_json::from_str(&secret)
        {
            return Ok(Some(c));
        }
        Ok(read_file()?.remove(server))
    }

    pub fn save(&self, server: &str) -> Result<Stored, CliError> {
        let json = serde_json::to_string(self).unwrap_or_default();
        let mut all = read_file()?;
        if let Some(entry) = keyring_entry(server)
            && entry.set_password(&json).is_ok()
        {
            if all.remove(server).is_some() {
                write_file(&all)?;
            }
            return Ok(Stored::Keyring);
        }
        all.insert(server.to_owned(), self.clone());
        Ok(Stored::File(write_file(&all)?))
    }

    pub fn delete(server: &str) -> Result<(), CliError> {
        if let Some(entry) = keyring_entry(server) {
            let _ = entry.delete_credential();
        }
        let mut all = read_file()?;
        if all.remove(server).is_some() {
            write_file(&all)?;
        }
        Ok(())
    }

    /// The token to send: an API token if one was given, else the access token.
    pub fn bearer(&self) -> Option<&str> {
        self.api_token.as_deref().or(self.access_token.as_deref())
    }
}
