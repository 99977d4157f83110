//! Jobs in containers: a job whose instance template names a base image runs its
//! commands in a container of its own, on the Docker Engine the agent talks to (the
//! Engine API through bollard).
//!
//! - The image: the base image plus the template's packages and setup script, built
//!   once and cached under a tag made from a hash of those inputs (and the base image's
//!   id, so a base image pulled again builds again). The build's output is a step of
//!   the job.
//! - The container: the workspace (and the modules' git dirs, read-only) bind-mounted
//!   at the same paths as on the host, so the file tools and the commands see the same
//!   files; commands run as the agent's own user (never root); a read-only root with a
//!   private /tmp; all capabilities dropped and no new privileges; no network unless
//!   the template allows it (then the host's, as under bubblewrap); the template's
//!   memory and CPU limits and a pids limit; an init that reaps what commands leave.
//! - Each bash call is an exec in the container; what it leaves running is killed when
//!   it ends. A process killed for the memory limit fails the job, saying so.
//! - The container goes when the job ends (kept, stopped, when the job failed and the
//!   agent runs with --keep-failed-containers).
//! - docker-in-docker: a privileged sidecar from the agent's --dind-image runs a Docker
//!   daemon of the job's own; the job's container reaches it through a socket in a
//!   volume they share (DOCKER_HOST), never the host's daemon.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures::StreamExt;
use kodel_core::infra::InstanceTemplate;
use sha2::{Digest, Sha256};

use crate::runner::{Failed, Reporter};

/// Where jobs run (`--runtime auto|docker|bwrap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// Containers where a Docker Engine answers; bubblewrap for the rest.
    Auto,
    /// A Docker Engine must answer at start.
    Docker,
    /// Never containers: jobs whose template names a base image go to other agents.
    Bwrap,
}

impl std::str::FromStr for Runtime {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Runtime::Auto),
            "docker" => Ok(Runtime::Docker),
            "bwrap" => Ok(Runtime::Bwrap),
            other => Err(format!("unknown runtime {other:?}; use auto, docker or bwrap")),
        }
    }
}

/// The Docker socket the agent uses: `--docker-host`, else DOCKER_HOST, else the
/// usual one. Only unix sockets: the workspace is bind-mounted, so the Engine must run
/// on the agent's host.
pub fn socket_path(host: Option<&str>) -> Result<PathBuf, String> {
    let host = host.map(str::to_owned).or_else(|| std::env::var("DOCKER_HOST").ok()).unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    match host.strip_prefix("unix://") {
        Some(path) if path.starts_with('/') => Ok(PathBuf::from(path)),
        _ if host.starts_with('/') => Ok(PathBuf::from(host)),
        _ => Err(format!(
            "docker host {host:?}: only a local unix socket works (unix:///var/run/docker.sock): a job's workspace is bind-mounted into its container, so the Docker Engine must run on the agent's host"
        )),
    }
}

/// How long one Engine request may take (a build or an exec streams within it).
const REQUEST_TIMEOUT_SECS: u64 = 24 * 3600;
/// How long the Engine has to answer the first ping.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Processes a job's container may run when its template sets no limit.
pub const DEFAULT_PIDS_LIMIT: i64 = 4096;
/// Where a docker-in-docker job's daemon socket is, in both containers.
const DIND_DIR: &str = "/run/kodel-dind";

/// A Docker Engine that answered.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    /// "Docker Engine 20.10.24 (API 1.41)".
    pub description: String,
    /// The image docker-in-docker sidecars run (it has dockerd), or why there is none.
    dind: Result<String, String>,
    /// Keep a failed job's container (stopped) for people to look at.
    keep_failed: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("description", &self.description).field("dind", &self.dind).finish()
    }
}

impl Engine {
    /// The capabilities it gives the agent (see `protocol::CAPABILITIES`).
    pub fn capabilities(&self) -> Vec<String> {
        let mut caps = vec!["container".to_owned()];
        if self.dind.is_ok() {
            caps.push("dind".into());
        }
        caps
    }
}

/// What `--runtime` found at start.
pub struct Detected {
    pub engine: Option<Engine>,
    /// Capabilities the agent lacks (`container`, `dind`), and why.
    pub missing: Vec<(&'static str, String)>,
}

impl Engine {
    /// Connects to the Engine at `socket` (per `runtime`). Err only when `--runtime
    /// docker` and no Engine answers.
    pub async fn detect(runtime: Runtime, socket: Result<PathBuf, String>, dind_image: Option<&str>, keep_failed: bool) -> Result<Detected, String> {
        if runtime == Runtime::Bwrap {
            let why = "the agent runs with --runtime bwrap".to_owned();
            return Ok(Detected { engine: None, missing: vec![("container", why.clone()), ("dind", why)] });
        }
        match Engine::connect(socket, dind_image, keep_failed).await {
            Ok(engine) => {
                let mut missing = Vec::new();
                match &engine.dind {
                    Ok(image) => tracing::info!("docker-in-docker jobs get a daemon of their own from {image}"),
                    Err(why) => missing.push(("dind", why.clone())),
                }
                tracing::info!("jobs whose instance template names a base image run in containers on {}", engine.description);
                Ok(Detected { engine: Some(engine), missing })
            }
            Err(why) if runtime == Runtime::Docker => Err(format!("--runtime docker: {why}")),
            Err(why) => {
                tracing::info!("no Docker Engine ({why}): jobs whose instance template names a base image go to other agents");
                Ok(Detected { engine: None, missing: vec![("container", why.clone()), ("dind", why)] })
            }
        }
    }

    async fn connect(socket: Result<PathBuf, String>, dind_image: Option<&str>, keep_failed: bool) -> Result<Engine, String> {
        let socket = socket?;
        let path = socket.to_string_lossy().into_owned();
        let docker = Docker::connect_with_unix(&path, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION).map_err(|e| format!("cannot use the Docker socket {path}: {e}"))?;
        let docker = tokio::time::timeout(PING_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| format!("the Docker Engine at {path} did not answer within {} s", PING_TIMEOUT.as_secs()))?
            .map_err(|e| format!("the Docker Engine at {path} does not answer: {e}"))?;
        let version = tokio::time::timeout(PING_TIMEOUT, docker.version())
            .await
            .map_err(|_| format!("the Docker Engine at {path} did not answer within {} s", PING_TIMEOUT.as_secs()))?
            .map_err(|e| format!("the Docker Engine at {path} does not answer: {e}"))?;
        let description = format!("Docker Engine {} (API {})", version.version.unwrap_or_default(), version.api_version.unwrap_or_default());
        let dind = match dind_image {
            None => Err("start the agent with --dind-image IMAGE (an image with dockerd, run privileged beside the job's container) to offer docker-in-docker".to_owned()),
            Some(image) => match docker.inspect_image(image).await {
                Ok(_) => probe_privileged(&docker, image).await.map(|()| image.to_owned()),
                Err(e) => Err(format!("the --dind-image {image} is not on the Docker Engine: {}", engine_error(&e))),
            },
        };
        Ok(Engine { docker, description, dind, keep_failed })
    }

    /// Removes the running containers of jobs of an agent on `workdir` that was killed
    /// (it holds the work dir's lock now, so they are no job's). Kept ones are stopped.
    pub async fn remove_leftovers(&self, workdir: &Path) {
        let label = format!("kodel.workdir={}", workdir.display());
        let filters = HashMap::from([("label", vec![label.as_str()]), ("status", vec!["running"])]);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let Ok(found) = self.docker.list_containers(Some(options)).await else { return };
        for c in found {
            let Some(id) = c.id else { continue };
            tracing::info!(container = %id, "removing a container left by an earlier run of this agent");
            let _ = self.docker.remove_container(&id, Some(RemoveContainerOptionsBuilder::default().force(true).v(true).build())).await;
        }
    }

    /// The job's image: the template's base image with its packages and setup script,
    /// from the cache when it was built before. The build is a step of the job, its
    /// output live.
    pub async fn image(&self, t: &InstanceTemplate, rep: &mut Reporter) -> Result<String, Failed> {
        let Some(base) = t.base_image.as_deref() else { return Err(("the instance template names no base image".into(), false)) };
        let base_id = self.base_image(base, &t.name, rep).await?;
        let recipe = Recipe::new(t);
        let tag = recipe.tag(&base_id);
        let started = Instant::now();
        if self.docker.inspect_image(&tag).await.is_ok() {
            rep.action("image", &format!("image {tag} (cached)"), &format!("reusing {tag}: {base} with the template's packages and setup script, built before\n"), false, started);
            return Ok(tag);
        }
        let context = recipe.context(base).map_err(|e| (format!("cannot make the image's build context: {e}"), false))?;
        let options = BuildImageOptionsBuilder::default()
            .t(&tag)
            .rm(true)
            .forcerm(true)
            // The admins' packages and script may need the network, as the setup
            // script has it under bubblewrap; the job's commands get it only when the
            // template says so.
            .networkmode("host")
            .labels(&HashMap::from([("kodel.template", t.name.as_str()), ("kodel.base", base)]))
            .build();
        let live = rep.live();
        let mut log = String::new();
        let mut failure = None;
        let mut stream = self.docker.build_image(options, None, Some(bollard::body_full(context.into())));
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    let text = info.stream.or(info.status).unwrap_or_default();
                    if !text.is_empty() {
                        log.push_str(&text);
                        let _ = live.tx.send(text);
                    }
                    if let Some(e) = info.error_detail.and_then(|d| d.message) {
                        failure = Some(e);
                    }
                }
                Err(e) => {
                    failure = Some(engine_error(&e));
                    break;
                }
            }
        }
        live.done().await;
        if let Some(e) = &failure {
            log.push_str(&format!("{e}\n"));
        }
        rep.action("image", &format!("build image {tag} from {base}"), &keep_tail(&log, 60_000), failure.is_some(), started);
        if let Some(e) = failure {
            // The step that failed is the last one the builder named.
            let step = log.lines().rev().find(|l| l.starts_with("Step ")).unwrap_or_default();
            let what = if step.contains(SETUP_MARK) {
                "the setup script failed"
            } else if step.contains(PACKAGES_MARK) {
                "installing the packages failed"
            } else {
                "the build failed"
            };
            return Err((
                format!(
                    "building the job's image from {base} failed: {what}: {e}. Fix the instance template {:?} (packages, setup_script) and move the task again. The build's last lines:\n{}",
                    t.name,
                    crate::job::workspace::tail(&log, 2000)
                ),
                false,
            ));
        }
        Ok(tag)
    }

    /// The base image's id, pulling it when the Engine does not have it.
    async fn base_image(&self, base: &str, template: &str, rep: &mut Reporter) -> Result<String, Failed> {
        if let Ok(image) = self.docker.inspect_image(base).await {
            return Ok(image.id.unwrap_or_default());
        }
        let started = Instant::now();
        let mut log = String::new();
        let mut failure = None;
        // Without a tag the Engine would pull every tag of the repository.
        let last = base.rsplit('/').next().unwrap_or(base);
        let reference = if last.contains(':') || base.contains('@') { base.to_owned() } else { format!("{base}:latest") };
        let options = CreateImageOptionsBuilder::default().from_image(&reference).build();
        let mut pull = self.docker.create_image(Some(options), None, None);
        while let Some(item) = pull.next().await {
            match item {
                Ok(info) => {
                    if let Some(s) = info.status {
                        log.push_str(&s);
                        log.push('\n');
                    }
                }
                Err(e) => {
                    failure = Some(engine_error(&e));
                    break;
                }
            }
        }
        rep.action("image", &format!("pull {base}"), &keep_tail(&log, 20_000), failure.is_some(), started);
        match (failure, self.docker.inspect_image(base).await) {
            (None, Ok(image)) => Ok(image.id.unwrap_or_default()),
            (failure, _) => Err((
                format!(
                    "the base image {base} is not on this agent's Docker Engine and could not be pulled{}. Pull or build it on the agent's host (docker pull {base}), or name another base_image in the instance template {template:?}",
                    failure.map(|e| format!(": {e}")).unwrap_or_default()
                ),
                false,
            )),
        }
    }

    /// Starts the job's container from `image` with the workspace mounted.
    pub async fn start(&self, image: &str, job: &JobMounts<'_>, t: &InstanceTemplate) -> Result<JobContainer, Failed> {
        let name = format!("kodel-{}", job.name);
        let remove = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        // A container of the same attempt left by an agent that was killed.
        let _ = self.docker.remove_container(&name, Some(remove.clone())).await;
        let _ = self.docker.remove_container(&format!("{name}-dind"), Some(remove)).await;
        let mut binds = vec![format!("{0}:{0}:rw", job.root.display())];
        binds.extend(job.read_only.iter().filter(|d| d.is_dir()).map(|d| format!("{0}:{0}:ro", d.display())));
        let mut env = Vec::new();
        let dind = if t.dind {
            let image = self.dind.clone().map_err(|why| (format!("this agent cannot give the job docker-in-docker: {why}"), true))?;
            let dind = self.start_dind(&name, &image, job).await?;
            binds.push(format!("{}:{DIND_DIR}", dind.volume));
            env.push(format!("DOCKER_HOST=unix://{DIND_DIR}/docker.sock"));
            Some(dind)
        } else {
            None
        };
        let memory = t.memory_mb.map(|mb| i64::from(mb.max(1)) << 20);
        let host = HostConfig {
            binds: Some(binds),
            network_mode: Some(if t.network { "host" } else { "none" }.into()),
            readonly_rootfs: Some(true),
            tmpfs: Some(HashMap::from([("/tmp".to_owned(), "rw,nosuid,nodev,mode=1777".to_owned())])),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            memory,
            // No swap beyond the memory limit.
            memory_swap: memory,
            nano_cpus: t.cpu_limit.map(|c| (f64::from(c) * 1e9) as i64),
            pids_limit: Some(t.max_processes.map(i64::from).unwrap_or(DEFAULT_PIDS_LIMIT)),
            init: Some(true),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            entrypoint: Some(vec!["sleep".into()]),
            cmd: Some(vec!["2147483647".into()]),
            // The container's own process runs as a user of its own, so clearing up
            // what the job's commands leave (`kill -9 -1` as the job's user) spares it.
            user: Some(keeper_user(&job.user)),
            // No working dir here: the Engine would make it in the image's root, and
            // one under /tmp would then give the private /tmp its mode (each exec has it).
            env: Some(env.clone()),
            labels: Some(labels(job)),
            host_config: Some(host),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = self.docker.create_container(Some(options), body).await.map_err(|e| (format!("cannot create the job's container from {image}: {}", engine_error(&e)), false))?;
        let mut container = JobContainer {
            docker: self.docker.clone(),
            id: created.id,
            name,
            user: job.user.clone(),
            workdir: job.root.to_string_lossy().into_owned(),
            env,
            shell: "sh".into(),
            memory_mb: t.memory_mb,
            template: t.name.clone(),
            oom: Arc::new(AtomicBool::new(false)),
            watch: None,
            dind,
            keep_failed: self.keep_failed,
            ended: AtomicBool::new(false),
        };
        container.watch = Some(container.watch_oom());
        self.docker
            .start_container(&container.id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(|e| (format!("cannot start the job's container from {image}: {}", engine_error(&e)), false))?;
        // bash where the image has it, else sh.
        let probe = container.run(&["sh", "-c", "command -v bash"], &[], Duration::from_secs(30), &mut |_| {}).await;
        match probe {
            Ok(Some(0)) => container.shell = "bash".into(),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return Err((format!("the job's image {image} cannot run commands: it needs /bin/sh"), false)),
        }
        Ok(container)
    }

    async fn start_dind(&self, name: &str, image: &str, job: &JobMounts<'_>) -> Result<Dind, Failed> {
        let volume = format!("{name}-dind");
        let uid_gid = format!("{}", nix::unistd::getegid());
        let host = HostConfig {
            privileged: Some(true),
            network_mode: Some("none".into()),
            binds: Some(vec![format!("{volume}:{DIND_DIR}")]),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            entrypoint: Some(vec!["dockerd".into()]),
            cmd: Some(vec![
                format!("--host=unix://{DIND_DIR}/docker.sock"),
                format!("--group={uid_gid}"),
                "--bridge=none".into(),
                "--iptables=false".into(),
                "--ip-masq=false".into(),
            ]),
            labels: Some(labels(job)),
            host_config: Some(host),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&volume).build();
        let fail = |what: &str, e: bollard::errors::Error| (format!("cannot {what} the job's Docker daemon from {image}: {}", engine_error(&e)), true);
        let created = self.docker.create_container(Some(options), body).await.map_err(|e| fail("create", e))?;
        self.docker.start_container(&created.id, None::<bollard::query_parameters::StartContainerOptions>).await.map_err(|e| fail("start", e))?;
        Ok(Dind { id: created.id, volume })
    }
}

/// The user the container's idle process runs as: not root and not the job's user.
fn keeper_user(job_user: &str) -> String {
    let uid = if job_user.starts_with("65535:") { 65533 } else { 65535 };
    format!("{uid}:{uid}")
}

/// Whether the Engine can run the dind image privileged (`dockerd --version`): a
/// rootless Engine, or one in a container without every capability, cannot.
async fn probe_privileged(docker: &Docker, image: &str) -> Result<(), String> {
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        entrypoint: Some(vec!["dockerd".into()]),
        cmd: Some(vec!["--version".into()]),
        host_config: Some(HostConfig { privileged: Some(true), network_mode: Some("none".into()), ..Default::default() }),
        ..Default::default()
    };
    let created = docker.create_container(None::<bollard::query_parameters::CreateContainerOptions>, body).await.map_err(|e| format!("cannot create a container from the --dind-image {image}: {}", engine_error(&e)))?;
    let ran = match docker.start_container(&created.id, None::<bollard::query_parameters::StartContainerOptions>).await {
        Err(e) => Err(format!("the Docker Engine cannot run privileged containers here, which docker-in-docker needs ({})", engine_error(&e))),
        Ok(()) => match docker.wait_container(&created.id, None::<bollard::query_parameters::WaitContainerOptions>).next().await {
            Some(Ok(_)) | None => Ok(()),
            Some(Err(e)) => Err(format!("dockerd in the --dind-image {image} does not run: {}", engine_error(&e))),
        },
    };
    let _ = docker.remove_container(&created.id, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await;
    ran
}

/// The labels of a job's containers: its workspace, and the agent's work dir (whose
/// running leftovers an agent removes when it starts).
fn labels(job: &JobMounts<'_>) -> HashMap<String, String> {
    let workdir = job.root.parent().unwrap_or(job.root).to_string_lossy().into_owned();
    HashMap::from([("kodel.workspace".to_owned(), job.name.to_owned()), ("kodel.workdir".to_owned(), workdir)])
}

/// What the job's container mounts, and as whom its commands run.
pub struct JobMounts<'a> {
    /// The workspace's directory name: the container is `kodel-<name>`.
    pub name: &'a str,
    pub root: &'a Path,
    /// The modules' git dirs (outside the workspace), read-only.
    pub read_only: &'a [PathBuf],
    /// `uid:gid` of the agent.
    pub user: String,
}

/// The mark in a build's log before the packages are installed (it tells the failing
/// part apart).
const PACKAGES_MARK: &str = "[kodel] installing the packages";
const SETUP_MARK: &str = "[kodel] running the setup script";

/// What makes a job's image: the Dockerfile and the setup script.
struct Recipe {
    packages: Vec<String>,
    setup: String,
}

impl Recipe {
    fn new(t: &InstanceTemplate) -> Recipe {
        Recipe { packages: t.packages.clone(), setup: t.setup_script.trim().to_owned() }
    }

    fn dockerfile(&self, base: &str) -> String {
        // By number: an image may have no /etc/passwd.
        let mut d = format!("FROM {base}\nUSER 0:0\n");
        if !self.packages.is_empty() {
            // Validated names (letters, digits and +-.:=_~): safe in a shell word.
            let p = self.packages.join(" ");
            d.push_str(&format!(
                "RUN echo '{PACKAGES_MARK}: {p}' && \\\n    if command -v apt-get >/dev/null; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {p} && rm -rf /var/lib/apt/lists/*; \\\n    elif command -v apk >/dev/null; then apk add --no-cache {p}; \\\n    elif command -v dnf >/dev/null; then dnf install -y {p}; \\\n    elif command -v yum >/dev/null; then yum install -y {p}; \\\n    else echo 'the base image has no package manager (apt-get, apk, dnf or yum) to install the packages with' >&2; exit 1; fi\n"
            ));
        }
        if !self.setup.is_empty() {
            d.push_str(&format!(
                "COPY setup.sh /etc/kodel/setup.sh\nRUN echo '{SETUP_MARK}' && if command -v bash >/dev/null; then bash -e /etc/kodel/setup.sh; else sh -e /etc/kodel/setup.sh; fi\n"
            ));
        }
        d
    }

    /// `kodel-job:<hash>` of the base image's id, the packages and the script.
    fn tag(&self, base_id: &str) -> String {
        let mut h = Sha256::new();
        for part in [base_id, &self.dockerfile("BASE"), &self.setup] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        let hex: String = h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("kodel-job:{hex}")
    }

    /// The build context: a tar with the Dockerfile and the setup script.
    fn context(&self, base: &str) -> std::io::Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, name, data)
        };
        add("Dockerfile", self.dockerfile(base).as_bytes())?;
        if !self.setup.is_empty() {
            add("setup.sh", self.setup.as_bytes())?;
        }
        tar.into_inner()
    }
}

/// A job's docker-in-docker daemon: a privileged sidecar and the volume with its socket.
struct Dind {
    id: String,
    volume: String,
}

/// A job's running container: commands run in it, and it goes when the job ends.
pub struct JobContainer {
    docker: Docker,
    id: String,
    name: String,
    user: String,
    workdir: String,
    /// Set in every exec (DOCKER_HOST of docker-in-docker).
    env: Vec<String>,
    /// `bash` where the image has it, else `sh`.
    shell: String,
    memory_mb: Option<i32>,
    template: String,
    /// Set when the kernel killed a process of the job for its memory limit.
    oom: Arc<AtomicBool>,
    watch: Option<tokio::task::JoinHandle<()>>,
    dind: Option<Dind>,
    keep_failed: bool,
    ended: AtomicBool,
}

impl std::fmt::Debug for JobContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContainer").field("name", &self.name).finish()
    }
}

impl JobContainer {
    /// Why the job cannot go on: a process was killed for the memory limit.
    pub fn failure(&self) -> Option<String> {
        self.oom.load(Ordering::Relaxed).then(|| {
            format!(
                "the job ran out of memory: a process was killed at the container's memory limit of {} MiB (memory_mb of the instance template {:?}); raise memory_mb or make the work use less",
                self.memory_mb.unwrap_or_default(),
                self.template
            )
        })
    }

    /// Follows the Engine's events for an out-of-memory kill in the container.
    fn watch_oom(&self) -> tokio::task::JoinHandle<()> {
        let (docker, id, oom) = (self.docker.clone(), self.id.clone(), self.oom.clone());
        tokio::spawn(async move {
            let filters = HashMap::from([("container", vec![id.as_str()]), ("event", vec!["oom"])]);
            let options = EventsOptionsBuilder::default().filters(&filters).build();
            let mut events = docker.events(Some(options));
            while let Some(event) = events.next().await {
                if event.is_ok() {
                    oom.store(true, Ordering::Relaxed);
                }
            }
        })
    }

    /// Runs `bash -c command` (or sh) in the container; see [`JobContainer::run`].
    pub async fn bash(&self, command: &str, env: &[(String, String)], timeout: Duration, output: &mut (dyn FnMut(&[u8]) + Send)) -> std::io::Result<Option<i64>> {
        let shell = self.shell.clone();
        let out = self.run(&[&shell, "-c", command], env, timeout, output).await;
        // An out-of-memory kill is reported by the Engine as an event of its own, a
        // moment after the process died: wait for it (bounded) before saying why.
        if matches!(out, Ok(Some(137))) && self.memory_mb.is_some() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !self.oom.load(Ordering::Relaxed) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        out
    }

    /// Runs `argv` in the container as the agent's user in the workspace, its output
    /// (stdout and stderr) to `output` as it comes. Ok(None): timed out. Whatever it
    /// left running is killed when it ends.
    pub async fn run(&self, argv: &[&str], env: &[(String, String)], timeout: Duration, output: &mut (dyn FnMut(&[u8]) + Send)) -> std::io::Result<Option<i64>> {
        let mut vars = self.env.clone();
        vars.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        // When it ends, what it left running goes, in the same exec: `kill -1` spares
        // the shell that sends it (and the container's own process, another user's).
        let mut cmd: Vec<String> = ["sh", "-c", r#""$@"; rc=$?; kill -9 -1 2>/dev/null; exit $rc"#, "sh"].map(str::to_owned).to_vec();
        cmd.extend(argv.iter().map(|a| a.to_string()));
        let exec = self
            .docker
            .create_exec(
                &self.id,
                CreateExecOptions {
                    cmd: Some(cmd),
                    env: Some(vars),
                    user: Some(self.user.clone()),
                    working_dir: Some(self.workdir.clone()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(io_error)?;
        let attached = self.docker.start_exec(&exec.id, None).await.map_err(io_error)?;
        let StartExecResults::Attached { output: mut stream, .. } = attached else {
            return Err(std::io::Error::other("the exec did not attach"));
        };
        let finished = tokio::time::timeout(timeout, async {
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(out) => output(&out.into_bytes()),
                    Err(_) => break,
                }
            }
        })
        .await
        .is_ok();
        drop(stream);
        if !finished {
            self.kill_leftovers().await;
            return Ok(None);
        }
        // The output ends a moment before the Engine records how the process ended.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let inspect = self.docker.inspect_exec(&exec.id).await.map_err(io_error)?;
            match (inspect.running, inspect.exit_code) {
                (Some(false), Some(code)) => return Ok(Some(code)),
                _ if Instant::now() > deadline => return Ok(Some(inspect.exit_code.unwrap_or(-1))),
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// Kills every process of the job's user in the container: all a command started,
    /// after its timeout.
    async fn kill_leftovers(&self) {
        let Ok(exec) = self
            .docker
            .create_exec(&self.id, CreateExecOptions::<String> { cmd: Some(vec!["sh".into(), "-c".into(), "kill -9 -1 2>/dev/null; true".into()]), user: Some(self.user.clone()), ..Default::default() })
            .await
        else {
            return;
        };
        if let Ok(StartExecResults::Attached { mut output, .. }) = self.docker.start_exec(&exec.id, None).await {
            while output.next().await.is_some() {}
        }
    }

    /// Ends the container: removed, or stopped and kept when the job failed and the
    /// agent keeps failed containers.
    pub async fn end(&self, succeeded: bool) {
        if self.ended.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Some(w) = &self.watch {
            w.abort();
        }
        if !succeeded && self.keep_failed {
            let _ = self.docker.stop_container(&self.id, Some(bollard::query_parameters::StopContainerOptionsBuilder::default().t(1).build())).await;
            if let Some(d) = &self.dind {
                let _ = self.docker.stop_container(&d.id, None::<bollard::query_parameters::StopContainerOptions>).await;
            }
            tracing::info!(container = %self.name, "the failed job's container is kept (stopped); remove it with docker rm");
            return;
        }
        remove(&self.docker, &self.id, self.dind.as_ref().map(|d| (d.id.clone(), d.volume.clone()))).await;
    }
}

impl Drop for JobContainer {
    /// A job stopped short (time limit, cancel, the agent stopping) still removes its
    /// container.
    fn drop(&mut self) {
        if let Some(w) = &self.watch {
            w.abort();
        }
        if self.ended.swap(true, Ordering::Relaxed) {
            return;
        }
        let (docker, id, dind) = (self.docker.clone(), self.id.clone(), self.dind.as_ref().map(|d| (d.id.clone(), d.volume.clone())));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { remove(&docker, &id, dind).await });
        }
    }
}

async fn remove(docker: &Docker, id: &str, dind: Option<(String, String)>) {
    let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
    if let Err(e) = docker.remove_container(id, Some(options.clone())).await {
        tracing::warn!(container = %id, error = %engine_error(&e), "cannot remove the job's container");
    }
    if let Some((dind, volume)) = dind {
        let _ = docker.remove_container(&dind, Some(options)).await;
        let _ = docker.remove_volume(&volume, None::<bollard::query_parameters::RemoveVolumeOptions>).await;
    }
}

/// The Engine's own message where it gave one.
fn engine_error(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.trim().to_owned(),
        bollard::errors::Error::DockerStreamError { error } => error.trim().to_owned(),
        other => other.to_string(),
    }
}

fn io_error(e: bollard::errors::Error) -> std::io::Error {
    std::io::Error::other(engine_error(&e))
}

/// The end of a long log, whole lines.
fn keep_tail(log: &str, max: usize) -> String {
    let tail = crate::job::workspace::tail(log, max);
    if tail.len() < log.len() { format!("[... {} bytes cut ...]\n{tail}", log.len() - tail.len()) } else { tail.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(packages: &[&str], setup: &str) -> InstanceTemplate {
        serde_json::from_value(serde_json::json!({
            "id": "00000000-0000-0000-0000-000000000001", "name": "t", "base_image": "debian:12", "packages": packages,
            "setup_script": setup, "env": {}, "network": false, "cpu_limit": null, "memory_mb": null, "dind": false,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn the_image_tag_follows_every_input() {
        let a = Recipe::new(&template(&["git"], "echo hi"));
        assert_eq!(a.tag("sha256:1"), Recipe::new(&template(&["git"], "echo hi")).tag("sha256:1"), "the same inputs, the same image");
        assert_ne!(a.tag("sha256:1"), a.tag("sha256:2"), "a base image pulled again builds again");
        assert_ne!(a.tag("sha256:1"), Recipe::new(&template(&["git", "make"], "echo hi")).tag("sha256:1"));
        assert_ne!(a.tag("sha256:1"), Recipe::new(&template(&["git"], "echo bye")).tag("sha256:1"));
        assert!(a.tag("x").starts_with("kodel-job:"));
    }

    #[test]
    fn the_dockerfile_installs_packages_then_runs_the_setup_script() {
        let d = Recipe::new(&template(&["git", "python3"], "pip install x")).dockerfile("rust:1.90");
        assert!(d.starts_with("FROM rust:1.90\nUSER 0:0\n"), "{d}");
        let packages = d.find("apt-get install -y --no-install-recommends git python3").unwrap();
        assert!(packages < d.find("/etc/kodel/setup.sh").unwrap(), "{d}");
        let bare = Recipe::new(&template(&[], "")).dockerfile("busybox");
        assert_eq!(bare, "FROM busybox\nUSER 0:0\n");
    }

    #[test]
    fn only_local_sockets() {
        assert_eq!(socket_path(Some("unix:///tmp/d.sock")).unwrap(), PathBuf::from("/tmp/d.sock"));
        assert!(socket_path(Some("tcp://10.0.0.1:2375")).unwrap_err().contains("bind-mounted"));
    }
}
