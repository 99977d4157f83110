//! The six tools an agent acts with, all confined to one workspace directory:
//! read_file, write_file, edit_file, bash, glob and grep (in `kodel_core::jobs::TOOLS`
//! order). A tool never panics at the model: bad input or a failure comes back as a
//! [`ToolOutput`] with `error` set and a message the model can act on.

pub mod bash;
mod edit_file;
mod glob;
mod grep;
mod path;
mod read_file;
mod write_file;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kodel_core::llm::ToolSpec;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedSender;

use crate::sandbox::Sandbox;

/// The directory a job works in, and how bash runs there.
#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
    sandbox: Sandbox,
    network: bool,
    env: BTreeMap<String, String>,
    /// HOME for commands (default: the workspace root).
    home: Option<PathBuf>,
    /// Directories commands may read (under the sandbox, outside the workspace).
    read_only: Vec<PathBuf>,
    /// The job's cgroups (its resource limits), when its template sets any.
    cgroup: Option<std::sync::Arc<crate::limits::JobCgroup>>,
    /// The job's container: bash runs there instead (the template names a base image).
    container: Option<std::sync::Arc<crate::container::JobContainer>>,
}

impl Workspace {
    /// A workspace at `root` (which must exist; it is canonicalized so that path
    /// checks compare resolved paths).
    pub fn new(root: &Path, sandbox: Sandbox) -> std::io::Result<Workspace> {
        let root = root.canonicalize()?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("workspace {} is not a directory", root.display()),
            ));
        }
        Ok(Workspace { root, sandbox, network: false, env: BTreeMap::new(), home: None, read_only: Vec::new(), cgroup: None, container: None })
    }

    /// Runs bash in the job's container.
    pub fn with_container(mut self, container: Option<std::sync::Arc<crate::container::JobContainer>>) -> Self {
        self.container = container;
        self
    }

    /// Why the job cannot go on after a command (its container ran out of memory).
    pub fn failure(&self) -> Option<String> {
        self.container.as_ref().and_then(|c| c.failure())
    }

    /// Runs every command in these cgroups (the job's limits).
    pub fn with_cgroup(mut self, cgroup: Option<crate::limits::JobCgroup>) -> Self {
        self.cgroup = cgroup.map(std::sync::Arc::new);
        self
    }

    /// Whether bash may use the network under the sandbox (default: no).
    pub fn with_network(mut self, allowed: bool) -> Self {
        self.network = allowed;
        self
    }

    /// Extra environment for bash (secret names in `SECRET_ENV` are dropped).
    pub fn with_env(mut self, env: BTreeMap<String, String>) -> Self {
        self.env = env;
        self
    }

    /// HOME for commands, inside the workspace (so the sandbox lets them write there).
    pub fn with_home(mut self, home: PathBuf) -> Self {
        self.home = Some(home);
        self
    }

    /// Directories outside the workspace that commands may read (a module's git dir).
    pub fn with_read_only(mut self, dirs: Vec<PathBuf>) -> Self {
        self.read_only = dirs;
        self
    }

    pub fn network(&self) -> bool {
        self.network
    }

    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Directories outside the workspace commands may read.
    pub fn read_only(&self) -> &[PathBuf] {
        &self.read_only
    }

    /// Resolves a tool's path argument inside the workspace.
    fn resolve(&self, input: &str) -> Result<PathBuf, String> {
        path::resolve(&self.root, input)
    }

    /// A path inside the workspace as the model should see it: relative to the root.
    fn display(&self, path: &Path) -> String {
        path::display(&self.root, path)
    }
}

/// What a tool call gives back to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    pub output: String,
    pub error: bool,
}

impl ToolOutput {
    fn ok(output: String) -> Self {
        ToolOutput { output, error: false }
    }

    fn err(output: String) -> Self {
        ToolOutput { output, error: true }
    }
}

impl From<Result<String, String>> for ToolOutput {
    fn from(r: Result<String, String>) -> Self {
        match r {
            Ok(s) => ToolOutput::ok(s),
            Err(s) => ToolOutput::err(s),
        }
    }
}

/// Tool specs (name, description, JSON Schema of the input) for the allowed tools, in
/// TOOLS order.
pub fn specs(allowed: &[String]) -> Vec<ToolSpec> {
    kodel_core::jobs::TOOLS
        .iter()
        .filter(|name| allowed.iter().any(|a| a == *name))
        .filter_map(|name| spec(name))
        .collect()
}

fn spec(name: &str) -> Option<ToolSpec> {
    let (description, parameters) = match name {
        "read_file" => (read_file::DESCRIPTION, read_file::schema()),
        "write_file" => (write_file::DESCRIPTION, write_file::schema()),
        "edit_file" => (edit_file::DESCRIPTION, edit_file::schema()),
        "bash" => (bash::DESCRIPTION, bash::schema()),
        "glob" => (glob::DESCRIPTION, glob::schema()),
        "grep" => (grep::DESCRIPTION, grep::schema()),
        _ => return None,
    };
    Some(ToolSpec { name: name.into(), description: description.into(), parameters })
}

/// Runs one tool call; never panics; a bad input (missing field, wrong type, invalid
/// JSON) is a ToolOutput with error=true that says what was wrong so the model can fix
/// it. `live` receives chunks of output while it is produced (bash stdout/stderr).
pub async fn run(ws: &Workspace, name: &str, arguments: &str, live: Option<&UnboundedSender<String>>) -> ToolOutput {
    match name {
        "read_file" => blocking(ws, name, arguments, read_file::run).await,
        "write_file" => blocking(ws, name, arguments, write_file::run).await,
        "edit_file" => blocking(ws, name, arguments, edit_file::run).await,
        "glob" => blocking(ws, name, arguments, glob::run).await,
        "grep" => blocking(ws, name, arguments, grep::run).await,
        "bash" => match parse(name, arguments) {
            Ok(input) => bash::run(ws, input, live).await,
            Err(e) => ToolOutput::err(e),
        },
        other => {
            ToolOutput::err(format!("unknown tool {other:?}; the tools are {}", kodel_core::jobs::TOOLS.join(", ")))
        }
    }
}

/// Parses the input and runs a file tool on a blocking thread (they do disk I/O and,
/// for glob and grep, walk whole trees).
async fn blocking<I, F>(ws: &Workspace, name: &str, arguments: &str, tool: F) -> ToolOutput
where
    I: DeserializeOwned + Send + 'static,
    F: FnOnce(&Workspace, I) -> Result<String, String> + Send + 'static,
{
    let input = match parse::<I>(name, arguments) {
        Ok(input) => input,
        Err(e) => return ToolOutput::err(e),
    };
    let ws = ws.clone();
    match tokio::task::spawn_blocking(move || tool(&ws, input)).await {
        Ok(result) => result.into(),
        Err(e) => ToolOutput::err(format!("{name} failed unexpectedly: {e}")),
    }
}

/// Reads the model's JSON arguments, saying precisely what is wrong with them.
fn parse<I: DeserializeOwned>(name: &str, arguments: &str) -> Result<I, String> {
    // Some models send nothing for "no arguments"; treat it as {} so the message
    // names the missing field rather than complaining about empty JSON.
    let text = if arguments.trim().is_empty() { "{}" } else { arguments };
    serde_json::from_str(text)
        .map_err(|e| format!("invalid arguments for {name}: {e}. Expected a JSON object {}", signature(name)))
}

/// A short form of a tool's input schema for error messages, e.g.
/// `{"path": string, "offset"?: integer}` (`?` marks optional fields).
fn signature(name: &str) -> String {
    let Some(spec) = spec(name) else { return String::new() };
    let required: Vec<&str> = spec.parameters["required"]
        .as_array()
        .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let fields: Vec<String> = spec.parameters["properties"]
        .as_object()
        .map(|props| {
            props
                .iter()
                .map(|(field, schema)| {
                    let optional = if required.contains(&field.as_str()) { "" } else { "?" };
                    format!("\"{field}\"{optional}: {}", schema["type"].as_str().unwrap_or("any"))
                })
                .collect()
        })
        .unwrap_or_default();
    format!("{{{}}}", fields.join(", "))
}

/// Opens a regular file for reading, with the messages read_file and edit_file share.
fn read_text(ws: &Workspace, input: &str, max_bytes: u64, tool_hint: &str) -> Result<(PathBuf, Vec<u8>), String> {
    let path = ws.resolve(input)?;
    let meta = std::fs::metadata(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("file not found: {input}"),
        _ => format!("cannot read {input}: {e}"),
    })?;
    if meta.is_dir() {
        return Err(format!("{input} is a directory, not a file; use glob to list the files in it"));
    }
    // A FIFO or a device would block the read forever.
    if !meta.is_file() {
        return Err(format!("{input} is not a regular file (a pipe, socket or device); these tools only handle files"));
    }
    if meta.len() > max_bytes {
        return Err(format!(
            "{input} is {} bytes, above the {} MiB limit; {tool_hint}",
            meta.len(),
            max_bytes / (1024 * 1024)
        ));
    }
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {input}: {e}"))?;
    if bytes[..bytes.len().min(8192)].contains(&0) {
        return Err(format!("{input} looks like a binary file (it contains NUL bytes); these tools only handle text"));
    }
    Ok((path, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_arguments_show_the_expected_shape() {
        let err = parse::<read_file::Input>("read_file", r#"{"offset": 3}"#).err().unwrap();
        assert!(err.starts_with("invalid arguments for read_file: missing field `path`"), "{err}");
        assert!(
            err.ends_with(r#"Expected a JSON object {"limit"?: integer, "offset"?: integer, "path": string}"#),
            "{err}"
        );
    }
}
