//! A whole cluster on one machine: a head (with its own raylet, which owns
//! the jobs the head runs) and N raylets as child processes on 127.0.0.1,
//! each on ports it picks itself, or on the well-known ports when asked
//! ([`ClusterOptions::well_known_ports`]). Used by `shoal up`, `shoal run`,
//! `shoal bench` and the end-to-end tests.
//!
//! Every child gets SIGKILL if this process dies (`PR_SET_PDEATHSIG`), and
//! [`LocalCluster::stop`] (also run on drop) sends SIGTERM, then SIGKILL after
//! a grace period, so no process outlives the cluster.
//!
//! A cluster has a token (`crate::auth`) unless asked to run without: one
//! is generated when none is given, written to `SESSION/token` (mode 0600)
//! for the processes, and remembered in this process for its addresses, so
//! `Client::connect` to any of them needs no configuration.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal_proto::v1 as pb;

use crate::error::Error;

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Number of raylets.
    pub nodes: usize,
    /// CPUs per raylet (default: the machine's).
    pub cpus_per_node: Option<f64>,
    /// Per-raylet extra arguments (index i goes to raylet i), e.g. `--num-cpus 1`.
    pub node_args: Vec<Vec<String>>,
    /// Arguments for every raylet.
    pub raylet_args: Vec<String>,
    /// Arguments for the head.
    pub head_args: Vec<String>,
    /// The `shoal` binary to run.
    pub binary: PathBuf,
    /// Where sockets, ready files and logs go (default: a new temp dir, removed on stop).
    pub session_dir: Option<PathBuf>,
    /// How long to wait for the cluster to come up.
    pub start_timeout: Duration,
    /// Address every process listens on (default 127.0.0.1).
    pub host: String,
    /// CPUs the head's raylet offers to tasks (default 0: it owns jobs and
    /// runs drivers only).
    pub head_cpus: f64,
    /// Run the head without a raylet (jobs are then owned by worker nodes).
    pub no_head_raylet: bool,
    /// Take the GCS and REST ports 6379 and 8265 when they are free (else
    /// free ones; [`LocalCluster::port_note`] says so).
    pub well_known_ports: bool,
    /// The cluster's token (default: a new random one).
    pub token: Option<crate::auth::Token>,
    /// Run without authentication (every process logs a warning).
    pub insecure_no_auth: bool,
}

impl ClusterOptions {
    /// `nodes` raylets run by `binary`.
    pub fn new(binary: impl Into<PathBuf>, nodes: usize) -> Self {
        ClusterOptions {
            nodes,
            cpus_per_node: None,
            node_args: Vec::new(),
            raylet_args: Vec::new(),
            head_args: Vec::new(),
            binary: binary.into(),
            session_dir: None,
            start_timeout: Duration::from_secs(30),
            host: "127.0.0.1".to_string(),
            head_cpus: 0.0,
            no_head_raylet: false,
            well_known_ports: false,
            token: None,
            insecure_no_auth: false,
        }
    }
}

/// One raylet of a local cluster.
#[derive(Clone, Debug)]
pub struct LocalRaylet {
    /// gRPC address (give it to `Client::connect`).
    pub address: String,
    /// Metrics and health address.
    pub http_address: String,
    /// Node id in hex.
    pub node_id: String,
    /// Process id.
    pub pid: u32,
}

/// A running local cluster.
pub struct LocalCluster {
    /// GCS gRPC address.
    pub gcs_address: String,
    /// Head HTTP address (REST API, metrics).
    pub http_address: String,
    /// The worker raylets, in start order (the head's is not among them).
    pub raylets: Vec<LocalRaylet>,
    /// The head's own raylet, which owns the jobs the head runs: connect
    /// drivers here.
    pub head_raylet: Option<LocalRaylet>,
    /// Why the cluster is not on the well-known ports, when it was asked to be.
    pub port_note: Option<String>,
    /// Session directory (logs under `logs/`).
    pub session_dir: PathBuf,
    /// Head process id.
    pub head_pid: u32,
    /// The cluster's token (`None`: started without authentication).
    pub token: Option<crate::auth::Token>,
    /// The head, then the raylets in start order.
    children: Vec<Child>,
    /// `--token-file FILE` (or `--insecure-no-auth`) for every process.
    auth_args: Vec<String>,
    owns_dir: bool,
    stopped: bool,
    opts: ClusterOptions,
    next_raylet: usize,
}

fn spawn_child(binary: &Path, args: &[String], log: &Path) -> Result<Child, Error> {
    let out = std::fs::File::create(log).map_err(|e| Error::io(format!("creating {}", log.display()), e))?;
    let err = out.try_clone().map_err(|e| Error::io("log file", e))?;
    let mut cmd = Command::new(binary);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    crate::process::die_with_parent(&mut cmd);
    cmd.spawn().map_err(|e| Error::io(format!("starting {}", binary.display()), e))
}

async fn wait_ready(path: &Path, child: &mut Child, log: &Path, deadline: Instant) -> Result<serde_json::Value, Error> {
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                return Ok(v);
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::Invalid(format!(
                "process exited with {status} before it was ready:\n{}",
                log_tail(log)
            )));
        }
        if Instant::now() > deadline {
            return Err(Error::Invalid(format!("process not ready in time:\n{}", log_tail(log))));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The last lines of a log file.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The well-known GCS and REST ports a local cluster takes when free.
pub const WELL_KNOWN_PORTS: (u16, u16) = (6379, 8265);

fn port_is_free(host: &str, port: u16) -> bool {
    std::net::TcpListener::bind((host, port)).is_ok()
}

fn raylet_of(v: &serde_json::Value, pid: u32) -> LocalRaylet {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    LocalRaylet { address: s("grpc"), http_address: s("http"), node_id: s("node_id"), pid }
}

impl LocalCluster {
    /// Starts a head and the raylets and waits until every raylet sees every other.
    pub async fn start(opts: ClusterOptions) -> Result<LocalCluster, Error> {
        let deadline = Instant::now() + opts.start_timeout;
        let (session_dir, owns_dir) = match &opts.session_dir {
            Some(d) => (d.clone(), false),
            None => {
                let d = std::env::temp_dir().join(format!("shoal-{}-{:08x}", std::process::id(), fastrand::u32(..)));
                (d, true)
            }
        };
        let logs = session_dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| Error::io(format!("creating {}", logs.display()), e))?;
        let token = match (&opts.token, opts.insecure_no_auth) {
            (_, true) => None,
            (Some(t), false) => Some(t.clone()),
            (None, false) => Some(crate::auth::Token::generate()?),
        };
        let auth_args: Vec<String> = match &token {
            Some(t) => {
                let file = session_dir.join("token");
                t.write_file(&file)?;
                vec!["--token-file".into(), file.display().to_string()]
            }
            None => vec!["--insecure-no-auth".into()],
        };
        let mut cluster = LocalCluster {
            gcs_address: String::new(),
            http_address: String::new(),
            raylets: Vec::new(),
            head_raylet: None,
            port_note: None,
            session_dir: session_dir.clone(),
            head_pid: 0,
            token,
            auth_args: auth_args.clone(),
            children: Vec::new(),
            owns_dir,
            stopped: false,
            opts: opts.clone(),
            next_raylet: 0,
        };
        let (mut gcs_port, mut http_port) = (0, 0);
        if opts.well_known_ports {
            let (g, h) = WELL_KNOWN_PORTS;
            let mut taken = Vec::new();
            if port_is_free(&opts.host, g) {
                gcs_port = g;
            } else {
                taken.push(format!("the GCS port {g}"));
            }
            if port_is_free(&opts.host, h) {
                http_port = h;
            } else {
                taken.push(format!("the REST port {h}"));
            }
            if !taken.is_empty() {
                let verb = if taken.len() > 1 { "are" } else { "is" };
                cluster.port_note = Some(format!(
                    "{} {verb} in use (another cluster?): this one listens on free ports instead",
                    taken.join(" and ")
                ));
            }
        }
        let head_ready = session_dir.join("head.ready");
        let head_log = logs.join("head.log");
        let head_args = |gcs_port: u16, http_port: u16| {
            let mut args: Vec<String> = vec![
                "head".into(),
                "--host".into(),
                opts.host.clone(),
                "--gcs-port".into(),
                gcs_port.to_string(),
                "--port".into(),
                http_port.to_string(),
                "--ready-file".into(),
                head_ready.display().to_string(),
            ];
            if opts.no_head_raylet {
                args.push("--no-raylet".into());
            } else {
                args.extend([
                    "--num-cpus".into(),
                    opts.head_cpus.to_string(),
                    "--raylet-port".into(),
                    "0".into(),
                    "--raylet-metrics-port".into(),
                    "0".into(),
                    "--worker-socket".into(),
                    session_dir.join("head.sock").display().to_string(),
                    "--spill-dir".into(),
                    session_dir.join("head-spill").display().to_string(),
                ]);
            }
            args.extend(auth_args.iter().cloned());
            // A durable head keeps finished jobs on disk, not in memory.
            if !opts.head_args.iter().any(|a| a == "--state-dir") {
                args.extend(["--state-dir".to_string(), session_dir.join("state").display().to_string()]);
            }
            args.extend(opts.head_args.iter().cloned());
            args
        };
        let mut head = spawn_child(&opts.binary, &head_args(gcs_port, http_port), &head_log)?;
        let mut ready = wait_ready(&head_ready, &mut head, &head_log, deadline).await;
        if ready.is_err() && (gcs_port, http_port) != (0, 0) {
            // Another cluster may have taken a well-known port between the
            // check and the bind: start over on free ports (any other
            // failure happens again and is reported).
            cluster.port_note =
                Some("the well-known ports were taken while starting: this cluster listens on free ports".into());
            let _ = head.wait();
            head = spawn_child(&opts.binary, &head_args(0, 0), &head_log)?;
            ready = wait_ready(&head_ready, &mut head, &head_log, deadline).await;
        }
        cluster.head_pid = head.id();
        cluster.children.push(head);
        let ready = ready?;
        cluster.gcs_address = ready["grpc"].as_str().unwrap_or_default().to_string();
        cluster.http_address = ready["http"].as_str().unwrap_or_default().to_string();
        if ready["raylet"].is_object() {
            cluster.head_raylet = Some(raylet_of(&ready["raylet"], cluster.head_pid));
        }

        let mut pending = Vec::new();
        for _ in 0..opts.nodes {
            pending.push(cluster.spawn_raylet()?);
        }
        for (ready_file, log, mut child) in pending {
            let r = wait_ready(&ready_file, &mut child, &log, deadline).await;
            let pid = child.id();
            cluster.children.push(child);
            cluster.raylets.push(raylet_of(&r?, pid));
        }
        cluster.wait_connected(deadline).await?;
        Ok(cluster)
    }

    /// Starts raylet number `next_raylet`; returns its ready file, log and process.
    fn spawn_raylet(&mut self) -> Result<(PathBuf, PathBuf, Child), Error> {
        let i = self.next_raylet;
        self.next_raylet += 1;
        let dir = &self.session_dir;
        let ready_file = dir.join(format!("raylet-{i}.ready"));
        let log = dir.join("logs").join(format!("raylet-{i}.log"));
        let mut args: Vec<String> = vec![
            "raylet".into(),
            "--gcs".into(),
            self.gcs_address.clone(),
            "--host".into(),
            self.opts.host.clone(),
            "--port".into(),
            "0".into(),
            "--metrics-port".into(),
            "0".into(),
            "--worker-socket".into(),
            dir.join(format!("raylet-{i}.sock")).display().to_string(),
            "--ready-file".into(),
            ready_file.display().to_string(),
            "--spill-dir".into(),
            dir.join(format!("raylet-{i}-spill")).display().to_string(),
        ];
        args.extend(self.auth_args.iter().cloned());
        if let Some(c) = self.opts.cpus_per_node {
            args.push("--num-cpus".into());
            args.push(c.to_string());
        }
        args.extend(self.opts.raylet_args.iter().cloned());
        if let Some(extra) = self.opts.node_args.get(i) {
            args.extend(extra.iter().cloned());
        }
        let child = spawn_child(&self.opts.binary, &args, &log)?;
        Ok((ready_file, log, child))
    }

    /// The arguments that give a process started beside this cluster its
    /// credentials: `--token-file SESSION/token`, or `--insecure-no-auth`.
    pub fn auth_args(&self) -> &[String] {
        &self.auth_args
    }

    /// Every raylet (the head's too) must know every alive node before the
    /// cluster is usable.
    async fn wait_connected(&mut self, deadline: Instant) -> Result<(), Error> {
        if let Some(t) = &self.token {
            crate::auth::remember(&self.addresses(), t);
        }
        let running: Vec<u32> =
            self.children.iter_mut().filter_map(|c| matches!(c.try_wait(), Ok(None)).then(|| c.id())).collect();
        let alive: Vec<LocalRaylet> = self.all_raylets().filter(|r| running.contains(&r.pid)).cloned().collect();
        let want = alive.len() as u32;
        for r in &alive {
            loop {
                let known = crate::client::node_stats(&r.address).await.map(|s| s.known_nodes).unwrap_or(0);
                if known >= want {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(Error::Invalid(format!("raylet {} sees {known} of {want} nodes", r.address)));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        Ok(())
    }

    /// The head's raylet, then the worker raylets.
    pub fn all_raylets(&self) -> impl Iterator<Item = &LocalRaylet> {
        self.head_raylet.iter().chain(self.raylets.iter())
    }

    /// Where drivers connect: the head's raylet (or the first worker raylet
    /// of a head without one).
    pub fn driver_address(&self) -> &str {
        self.head_raylet.as_ref().or(self.raylets.first()).map(|r| r.address.as_str()).unwrap_or_default()
    }

    /// Starts one more raylet (a replacement for a killed one, say) and
    /// waits until the cluster knows it; returns its index in `raylets`.
    pub async fn add_raylet(&mut self) -> Result<usize, Error> {
        let deadline = Instant::now() + self.opts.start_timeout;
        let (ready_file, log, mut child) = self.spawn_raylet()?;
        let r = wait_ready(&ready_file, &mut child, &log, deadline).await;
        let pid = child.id();
        self.children.push(child);
        self.raylets.push(raylet_of(&r?, pid));
        self.wait_connected(deadline).await?;
        Ok(self.raylets.len() - 1)
    }

    /// Every address of the cluster: the GCS, the REST API and each raylet.
    pub fn addresses(&self) -> Vec<String> {
        let mut a = vec![self.gcs_address.clone(), self.http_address.clone()];
        a.extend(self.all_raylets().map(|r| r.address.clone()));
        a
    }

    /// Stops every process: SIGTERM, then SIGKILL after two seconds.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        crate::auth::forget(&self.addresses());
        // Raylets first, then the head.
        for c in self.children.iter().rev() {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for c in self.children.iter_mut().rev() {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        if self.owns_dir && std::env::var_os("SHOAL_KEEP_SESSION").is_none() {
            let _ = std::fs::remove_dir_all(&self.session_dir);
        }
    }

    /// Process ids of the head and raylets.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    /// Process ids of the workers raylet `i` started.
    pub fn worker_pids(&self, i: usize) -> Vec<u32> {
        let Some(raylet) = self.raylets.get(i) else { return Vec::new() };
        crate::process::children_of(raylet.pid)
    }

    /// Sends SIGKILL to raylet `i` (for fault tests).
    pub fn kill_raylet(&mut self, i: usize) {
        if let Some(c) = self.children.get_mut(i + 1) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Lists the nodes the GCS knows.
    pub async fn nodes(&self) -> Result<Vec<pb::NodeInfo>, Error> {
        let mut gcs =
            crate::raylet::connect_gcs(&self.gcs_address, self.token.as_ref(), Duration::from_secs(5)).await?;
        Ok(gcs.get_nodes(pb::GetNodesRequest {}).await.map_err(|s| Error::rpc("nodes", s))?.into_inner().nodes)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
