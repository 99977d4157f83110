//! A private Docker Engine (Debian's `docker.io`, installed by scripts/test.sh) for one
//! test: `dockerd --bridge=none --iptables=false` with its own socket, data root and
//! exec root in a temporary directory, so it takes no address range and touches no
//! other daemon. The socket belongs to the group `kodel-docker`, which an agent started
//! as root keeps to reach it (as it would Debian's `docker` group). No registry is
//! reachable: images are made here, `FROM scratch` with Debian's static busybox.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The group the test daemons' sockets belong to.
pub const GROUP: &str = "kodel-docker";

pub struct Dockerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Dockerd {
    /// Starts one and waits until it answers. Needs root (dockerd does).
    pub fn start() -> Dockerd {
        assert!(nix::unistd::geteuid().is_root(), "the container tests run a private dockerd, which needs root (CI runs as root)");
        assert!(Path::new("/usr/sbin/dockerd").exists(), "/usr/sbin/dockerd is missing: scripts/test.sh installs docker.io");
        let out = Command::new("groupadd").args(["-f", GROUP]).output().expect("groupadd");
        assert!(out.status.success(), "groupadd {GROUP}: {}", String::from_utf8_lossy(&out.stderr));
        // Short: the daemon's sockets live under it (unix socket paths are bounded).
        let dir = tempfile::Builder::new().prefix("kd").tempdir_in("/tmp").unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let d = dir.path();
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let child = Command::new("/usr/sbin/dockerd")
            .args(["--bridge=none", "--iptables=false", "--ip-masq=false", "--ip6tables=false", "--group", GROUP])
            .arg(format!("--data-root={}", d.join("data").display()))
            .arg(format!("--exec-root={}", d.join("x").display()))
            .arg(format!("--pidfile={}", d.join("pid").display()))
            .arg(format!("--host=unix://{}", d.join("docker.sock").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let engine = Dockerd { dir, child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if engine.docker(&["version", "--format", "{{.Server.Version}}"]).status.success() {
                break;
            }
            assert!(Instant::now() < deadline, "dockerd did not answer within 30 s:\n{}", engine.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        engine
    }

    /// `unix://<socket>`, for DOCKER_HOST or the agent's --docker-host.
    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Runs the docker CLI against this daemon (for a test's own setup and checks).
    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker").arg("--host").arg(self.host()).args(args).stdin(Stdio::null()).output().expect("the docker CLI (docker.io)")
    }

    /// Builds `tag`: busybox (Debian's static one) `FROM scratch`, with `files`
    /// (path in the image, content) added. Under a second.
    pub fn busybox_image(&self, tag: &str, files: &[(&str, &str)]) {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"].into_iter().map(PathBuf::from).find(|p| p.exists()).expect("busybox: scripts/test.sh installs busybox-static");
        let ctx = tempfile::tempdir().unwrap();
        std::fs::copy(&busybox, ctx.path().join("busybox")).unwrap();
        let mut dockerfile = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n".to_owned();
        for (i, (path, content)) in files.iter().enumerate() {
            std::fs::write(ctx.path().join(format!("f{i}")), content).unwrap();
            dockerfile.push_str(&format!("COPY f{i} {path}\n"));
        }
        std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
        let out = self.docker(&["build", "-q", "-t", tag, ctx.path().to_str().unwrap()]);
        assert!(out.status.success(), "docker build {tag}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Builds `tag`: Debian's Docker Engine (dockerd, containerd, runc, the docker CLI)
    /// and busybox, copied from this host with the libraries they load, `FROM scratch`.
    /// A docker-in-docker image for tests: no registry is reachable.
    pub fn dind_image(&self, tag: &str) {
        let ctx = tempfile::tempdir().unwrap();
        let root = ctx.path().join("root");
        let binaries = ["/usr/sbin/dockerd", "/usr/bin/containerd", "/usr/bin/containerd-shim-runc-v2", "/usr/sbin/runc", "/usr/bin/docker-init", "/usr/bin/docker", "/bin/busybox"];
        for bin in binaries {
            let mut files = vec![PathBuf::from(bin)];
            let ldd = Command::new("ldd").arg(bin).output().unwrap();
            files.extend(String::from_utf8_lossy(&ldd.stdout).split_whitespace().filter(|w| w.starts_with('/')).map(PathBuf::from));
            for f in files {
                let to = root.join(f.strip_prefix("/").unwrap());
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::copy(&f, &to).unwrap_or_else(|e| panic!("copy {}: {e}", f.display()));
            }
        }
        std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\nCOPY root/ /\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n").unwrap();
        let out = self.docker(&["build", "-q", "-t", tag, ctx.path().to_str().unwrap()]);
        assert!(out.status.success(), "docker build {tag}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Whether this Engine can run a privileged container from `image` (not where the
    /// machine withholds a capability from root, or the Engine is rootless).
    pub fn privileged_works(&self, image: &str) -> bool {
        self.docker(&["run", "--rm", "--privileged", "--network", "none", "--entrypoint", "true", image]).status.success()
    }

    /// Names of the containers there are (running or not).
    pub fn containers(&self) -> Vec<String> {
        let out = self.docker(&["ps", "-a", "--format", "{{.Names}}"]);
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    }

    /// Tags of the images there are.
    pub fn images(&self) -> Vec<String> {
        let out = self.docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Containers first, so the daemon can unmount everything it mounted.
        let names = self.containers();
        if !names.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(names.iter().map(String::as_str));
            let _ = self.docker(&args);
        }
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
