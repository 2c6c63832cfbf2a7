//! Throwaway etcd clusters on loopback for tests, torn down on drop (panics included).

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use etcd_client::{Client, ConnectOptions};
use tempfile::TempDir;
use tokio::time::Instant;

/// The etcd server binary (Debian's `etcd-server` package).
const ETCD_BIN: &str = "/usr/bin/etcd";
/// How long a cluster may take to elect a leader.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Cluster directories are `$TMPDIR/coxswain-etcd-*`.
const DIR_PREFIX: &str = "coxswain-etcd-";
/// Held (flock) by the process owning a cluster directory for the cluster's lifetime.
const OWNER_LOCK: &str = "owner.lock";

/// How to start an [`EtcdCluster`].
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Number of members (1 or 3 in practice).
    pub members: usize,
    /// etcd's `--experimental-watch-progress-notify-interval`: how often an idle watch with
    /// progress notify gets a notification. Default 200 ms (etcd's own default is 10 min).
    pub progress_notify_interval: Duration,
    /// Raft heartbeat. Default 100 ms (etcd's default).
    pub heartbeat_interval: Duration,
    /// Raft election timeout: how long the cluster is without a leader after the leader dies.
    /// Default 1 s (etcd's default; shorter ones cause spurious elections on a busy machine).
    pub election_timeout: Duration,
    /// `--max-request-bytes`. Default 2 MiB, enough for the store's 1.5 MiB values.
    pub max_request_bytes: usize,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            members: 1,
            progress_notify_interval: Duration::from_millis(200),
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            max_request_bytes: 2 * 1024 * 1024,
        }
    }
}

#[derive(Debug)]
struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    log: PathBuf,
    process: Option<Child>,
    /// etcd's member id, learned once the member is healthy.
    id: u64,
}

/// A running etcd cluster of 1..n members on 127.0.0.1 with data in a temporary directory.
///
/// Dropping it SIGKILLs every member and removes the directory, also when a test panics. The
/// members additionally get SIGKILL when the thread that started them exits (Linux parent death
/// signal), so even a killed test process leaves no etcd behind; keep the cluster on the thread
/// that started it (`#[tokio::test]` runs the test body on the test's thread).
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: TempDir,
    /// Marks `dir` as in use; a directory whose lock is free was left by a killed test process.
    _owner: nix::fcntl::Flock<File>,
}

impl EtcdCluster {
    /// Starts `members` members with default options and waits until they have a leader.
    pub async fn start(members: usize) -> Result<EtcdCluster> {
        EtcdCluster::start_with(EtcdOptions {
            members,
            ..EtcdOptions::default()
        })
        .await
    }

    /// Starts a cluster and waits until every member is healthy and knows the leader.
    pub async fn start_with(options: EtcdOptions) -> Result<EtcdCluster> {
        if options.members == 0 {
            bail!("an etcd cluster needs at least one member");
        }
        // Ports are picked by binding to port 0 and released just before etcd binds them, so
        // another process may take one in between: retry with fresh ports.
        let mut last_error = None;
        for _ in 0..3 {
            match EtcdCluster::try_start(&options).await {
                Ok(cluster) => return Ok(cluster),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    async fn try_start(options: &EtcdOptions) -> Result<EtcdCluster> {
        remove_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .context("create a temporary directory for etcd")?;
        let owner = lock_owner(dir.path())?;
        let ports = free_ports(options.members * 2)?;
        let mut members: Vec<Member> = (0..options.members)
            .map(|i| Member {
                name: format!("m{i}"),
                client_url: format!("http://127.0.0.1:{}", ports[2 * i]),
                peer_url: format!("http://127.0.0.1:{}", ports[2 * i + 1]),
                log: dir.path().join(format!("m{i}.log")),
                process: None,
                id: 0,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            dir,
            _owner: owner,
        };
        for member in &mut members {
            let data_dir = cluster.dir.path().join(&member.name);
            let log = File::create(&member.log)
                .with_context(|| format!("create {}", member.log.display()))?;
            let mut command = Command::new(ETCD_BIN);
            command
                .arg("--name")
                .arg(&member.name)
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["--listen-client-urls", &member.client_url])
                .args(["--advertise-client-urls", &member.client_url])
                .args(["--listen-peer-urls", &member.peer_url])
                .args(["--initial-advertise-peer-urls", &member.peer_url])
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "coxswain-test"])
                .arg(format!(
                    "--heartbeat-interval={}",
                    options.heartbeat_interval.as_millis()
                ))
                .arg(format!(
                    "--election-timeout={}",
                    options.election_timeout.as_millis()
                ))
                .arg(format!(
                    "--experimental-watch-progress-notify-interval={}ms",
                    options.progress_notify_interval.as_millis()
                ))
                .arg(format!("--max-request-bytes={}", options.max_request_bytes))
                .args([
                    "--logger",
                    "zap",
                    "--log-level",
                    "warn",
                    "--log-outputs",
                    "stderr",
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone().context("duplicate the etcd log file")?)
                .stderr(log);
            kill_with_parent(&mut command);
            let process = command
                .spawn()
                .with_context(|| format!("start {ETCD_BIN} for member {}", member.name))?;
            member.process = Some(process);
        }
        cluster.members = members;
        cluster.wait_healthy().await?;
        Ok(cluster)
    }

    /// Waits until every running member answers and reports a leader; records member ids.
    async fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        for index in 0..self.members.len() {
            loop {
                if let Some(status) = self.members[index]
                    .process
                    .as_mut()
                    .and_then(|p| p.try_wait().ok().flatten())
                {
                    bail!(
                        "etcd member {} exited with {status} while starting:\n{}",
                        self.members[index].name,
                        self.log_tail(index)
                    );
                }
                match member_status(&self.members[index].client_url).await {
                    Ok((id, leader)) if leader != 0 => {
                        self.members[index].id = id;
                        break;
                    }
                    _ if Instant::now() > deadline => bail!(
                        "etcd member {} was not healthy within {START_TIMEOUT:?}:\n{}",
                        self.members[index].name,
                        self.log_tail(index)
                    ),
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
        Ok(())
    }

    /// The client URLs of all members (killed ones included), in member order.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members (never true for a started cluster).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// SIGKILLs member `index` and reaps it.
    pub fn kill(&mut self, index: usize) -> Result<()> {
        let member = self
            .members
            .get_mut(index)
            .with_context(|| format!("no etcd member {index}"))?;
        if let Some(mut process) = member.process.take() {
            process
                .kill()
                .with_context(|| format!("kill etcd member {}", member.name))?;
            process.wait().ok();
        }
        Ok(())
    }

    /// The index of the current leader, as reported by the running members (waits up to the
    /// start timeout for an election to finish).
    pub async fn leader(&self) -> Result<usize> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            for member in self.members.iter().filter(|m| m.process.is_some()) {
                if let Ok((_, leader)) = member_status(&member.client_url).await
                    && leader != 0
                    && let Some(index) = self
                        .members
                        .iter()
                        .position(|m| m.id == leader && m.process.is_some())
                {
                    return Ok(index);
                }
            }
            if Instant::now() > deadline {
                bail!("no etcd member reported a live leader within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last lines of member `index`'s log, for failure messages.
    pub fn log_tail(&self, index: usize) -> String {
        let Some(member) = self.members.get(index) else {
            return String::new();
        };
        let log = std::fs::read_to_string(&member.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            let _ = self.kill(index);
        }
        // `dir` (a TempDir) is removed after this, with the data directories in it.
    }
}

/// Locks a new cluster directory for this process. The lock file is locked under a temporary
/// name and then renamed, so a concurrent [`remove_stale_dirs`] never sees it unlocked.
fn lock_owner(dir: &Path) -> Result<nix::fcntl::Flock<File>> {
    use nix::fcntl::{Flock, FlockArg};
    let pending = dir.join(format!("{OWNER_LOCK}.new"));
    let file = File::create(&pending).with_context(|| format!("create {}", pending.display()))?;
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, errno)| errno)
        .with_context(|| format!("lock {}", pending.display()))?;
    std::fs::rename(&pending, dir.join(OWNER_LOCK)).context("publish the owner lock")?;
    Ok(lock)
}

/// Removes cluster directories left behind by test processes that were killed (their etcd
/// members died with them, but nothing removed the data). A directory is stale when its owner
/// lock can be taken; directories without a lock yet are being created and are left alone.
fn remove_stale_dirs() {
    use nix::fcntl::{Flock, FlockArg};
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let Ok(file) = File::open(entry.path().join(OWNER_LOCK)) else {
            continue;
        };
        if let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            tracing::info!(dir = %entry.path().display(), "removing a stale etcd test directory");
            let _ = std::fs::remove_dir_all(entry.path());
            drop(lock);
        }
    }
}

/// Asks one member for its id and the leader's id (0 if it knows none).
async fn member_status(url: &str) -> Result<(u64, u64)> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_secs(1));
    let mut client = Client::connect([url], Some(options)).await?;
    let status = tokio::time::timeout(Duration::from_secs(1), client.status())
        .await
        .context("etcd status timed out")??;
    let id = status.header().map(|h| h.member_id()).unwrap_or(0);
    Ok((id, status.leader()))
}

/// `count` distinct free TCP ports on loopback.
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()
        .context("bind a free port on 127.0.0.1")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Makes the child get SIGKILL when the spawning thread exits.
pub(crate) fn kill_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe; it touches no memory shared with the parent.
    #[allow(
        unsafe_code,
        reason = "pre_exec is the only way to set a parent death signal"
    )]
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}
