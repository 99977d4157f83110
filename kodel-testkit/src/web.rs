//! Node programs the web and SSO tests run: a real browser (Debian's chromium through
//! npm's playwright-core) and a real OpenID provider (npm's oidc-provider). scripts/test.sh
//! installs both packages and sets KODEL_NODE_MODULES.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the node packages are.
pub fn node_modules() -> PathBuf {
    let dir = std::env::var_os("KODEL_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| dirs_cache().join("kodel/node/node_modules"));
    assert!(
        dir.join("playwright-core").is_dir() && dir.join("oidc-provider").is_dir(),
        "the web tests need playwright-core and oidc-provider in {} (scripts/test.sh installs them)",
        dir.display()
    );
    dir
}

fn dirs_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"))
}

/// A script of `kodel-testkit/web/`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web").join(name)
}

/// Where a test keeps its screenshots (kept after the run, as test output).
pub fn screenshots(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/web-screenshots").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The outcome of a node program.
pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// The last line of stdout, as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.lines().last().unwrap_or("null")).unwrap_or(serde_json::Value::Null)
    }
}

/// Runs `script` with node (at most `limit`, then it is killed and the run fails).
pub async fn run(script_name: &str, env: &[(&str, String)], limit: Duration) -> Ran {
    let mut cmd = Command::new("node");
    cmd.arg(script(script_name)).env("KODEL_NODE_MODULES", node_modules()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("node runs");
    let pid = child.id();
    let waited = tokio::time::timeout(limit, tokio::task::spawn_blocking(move || child.wait_with_output())).await;
    match waited {
        Ok(out) => {
            let out = out.unwrap().unwrap();
            Ran { ok: out.status.success(), stdout: String::from_utf8_lossy(&out.stdout).into(), stderr: String::from_utf8_lossy(&out.stderr).into() }
        }
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            Ran { ok: false, stdout: String::new(), stderr: format!("{script_name} did not finish within {limit:?}") }
        }
    }
}

/// A real OpenID provider (oidc-provider 9) on 127.0.0.1, with one confidential client
/// and one user; stopped when dropped.
pub struct OidcProvider {
    child: Child,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// The user's login and password at the provider.
    pub login: String,
    pub password: String,
    pub email: String,
}

impl OidcProvider {
    /// `redirect`: the Kodel server's callback URL. `email_verified`: what the provider
    /// says of the user's email. `orgs`: the `kodel_orgs` claim.
    pub fn start(redirect: &str, email: &str, email_verified: bool, orgs: &[&str]) -> OidcProvider {
        Self::start_on(crate::free_port(), redirect, email, email_verified, orgs)
    }

    /// The same on a given port (a provider started again there has a new signing key:
    /// a key rotation, as far as its clients can tell).
    pub fn start_on(port: u16, redirect: &str, email: &str, email_verified: bool, orgs: &[&str]) -> OidcProvider {
        let issuer = format!("http://127.0.0.1:{port}");
        let mut child = Command::new("node")
            .arg(script("oidc_provider.mjs"))
            .env("KODEL_NODE_MODULES", node_modules())
            .env("PORT", port.to_string())
            .env("ISSUER", &issuer)
            .env("REDIRECT", redirect)
            .env("EMAIL", email)
            .env("EMAIL_VERIFIED", if email_verified { "true" } else { "false" })
            .env("ORGS", orgs.join(","))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs");
        // It prints "ready" once it listens.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.trim() == "ready" {
                    let _ = tx.send(());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while rx.recv_timeout(Duration::from_millis(100)).is_err() {
            assert!(Instant::now() < deadline, "the OpenID provider did not start");
            assert!(child.try_wait().unwrap().is_none(), "the OpenID provider exited");
        }
        OidcProvider {
            child,
            issuer,
            client_id: "kodel".into(),
            client_secret: "kodel-client-secret-for-tests".into(),
            login: "pat".into(),
            password: "pat-password".into(),
            email: email.into(),
        }
    }

    /// An ID token signed with the provider's own key, with these claims (a test-only
    /// endpoint of the test provider, to make tokens that must be refused).
    pub async fn sign(&self, claims: serde_json::Value) -> String {
        let resp = reqwest::Client::new().post(format!("{}/test/sign", self.issuer)).json(&claims).send().await.unwrap();
        assert!(resp.status().is_success());
        resp.text().await.unwrap()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
