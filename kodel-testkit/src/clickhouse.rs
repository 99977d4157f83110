//! A private ClickHouse server (Debian's `clickhouse-server`, installed by
//! scripts/test.sh) in a temporary directory with its own HTTP port, which a test can
//! stop and start again on the same data and port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ClickHouseServer {
    dir: tempfile::TempDir,
    pub port: u16,
    /// The HTTPS port, when started with `start_tls`.
    pub tls_port: Option<u16>,
    child: Option<Child>,
}

/// The server binary: KODEL_CLICKHOUSE_SERVER, else Debian's.
fn binary() -> PathBuf {
    std::env::var_os("KODEL_CLICKHOUSE_SERVER").map(PathBuf::from).unwrap_or_else(|| "/usr/sbin/clickhouse-server".into())
}

impl ClickHouseServer {
    /// Starts one and waits until it answers.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// The same, also serving HTTPS with a self-signed certificate for `localhost`
    /// (`cert_file`), made with the `openssl` command.
    pub async fn start_tls() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> Self {
        assert!(binary().exists(), "{} is missing: scripts/test.sh installs clickhouse-server", binary().display());
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let d = dir.path().display();
        let (tls_port, https) = if tls {
            let out = Command::new("openssl")
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
                .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:FALSE"])
                .args(["-addext", "extendedKeyUsage=serverAuth"])
                .arg("-keyout")
                .arg(dir.path().join("key.pem"))
                .arg("-out")
                .arg(dir.path().join("cert.pem"))
                .output()
                .expect("openssl is installed (scripts/test.sh installs it)");
            assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
            let p = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let config = format!(
                "<https_port>{p}</https_port>\n  <openSSL><server><certificateFile>{d}/cert.pem</certificateFile>\
                 <privateKeyFile>{d}/key.pem</privateKeyFile><verificationMode>none</verificationMode>\
                 <loadDefaultCAFile>false</loadDefaultCAFile><disableProtocols>sslv2,sslv3</disableProtocols></server></openSSL>\n  "
            );
            (Some(p), config)
        } else {
            (None, String::new())
        };
        std::fs::write(
            dir.path().join("config.xml"),
            format!(
                "<?xml version=\"1.0\"?>\n<yandex>\n  <logger><level>warning</level><console>1</console></logger>\n  \
                 <http_port>{port}</http_port>\n  {https}<listen_host>127.0.0.1</listen_host>\n  <path>{d}/data/</path>\n  \
                 <tmp_path>{d}/data/tmp/</tmp_path>\n  <user_files_path>{d}/data/user_files/</user_files_path>\n  \
                 <format_schema_path>{d}/data/format_schemas/</format_schema_path>\n  <users_config>{d}/users.xml</users_config>\n  \
                 <default_profile>default</default_profile>\n  <default_database>default</default_database>\n  \
                 <mark_cache_size>268435456</mark_cache_size>\n</yandex>\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("users.xml"),
            "<?xml version=\"1.0\"?>\n<yandex>\n  <profiles><default></default></profiles>\n  <users>\n    <default>\n      \
             <password></password>\n      <networks><ip>127.0.0.1</ip></networks>\n      <profile>default</profile>\n      \
             <quota>default</quota>\n    </default>\n  </users>\n  <quotas><default></default></quotas>\n</yandex>\n",
        )
        .unwrap();
        let mut server = Self { dir, port, tls_port, child: None };
        server.start_again().await;
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The HTTPS address (`start_tls`), by the name its certificate carries.
    pub fn https_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("https://localhost:{p}"))
    }

    /// The self-signed certificate of `start_tls`.
    pub fn cert_file(&self) -> std::path::PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// Starts the stopped server on the same data and port, and waits until it answers.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("server.log")).unwrap();
        let child = Command::new(binary())
            .arg(format!("--config-file={}", self.dir.path().join("config.xml").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{}/ping", self.url())).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("clickhouse-server exited ({status}): {}", self.log());
            }
            assert!(Instant::now() < deadline, "clickhouse-server did not answer in 30 s: {}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server (as a crash would) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Runs a query over HTTP and returns its text answer.
    pub async fn query(&self, sql: &str) -> String {
        let r = reqwest::Client::new().post(self.url()).body(sql.to_owned()).send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "{sql}: {text}");
        text
    }
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        self.stop();
    }
}
