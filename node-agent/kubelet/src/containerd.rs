//! A containerd the node agent starts and owns: its own config, root, state
//! and socket, with the settings this kind of machine needs
//! (`restrict_oom_score_adj`, CNI from `/usr/lib/cni`, our pause image).
//!
//! Containers survive a restart of containerd (their shims keep running), so
//! stopping the agent and its containerd leaves pods running for the next
//! agent to adopt.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use tracing::{info, warn};

/// Errors of managing containerd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be written.
    #[error("failed to write {path}: {source}")]
    Write {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The binary could not be started.
    #[error("failed to start {binary}: {source} (install containerd)")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// containerd did not answer on its socket in time.
    #[error("containerd did not serve CRI on {socket} within {waited:?}; see {log}")]
    NotReady {
        /// The socket.
        socket: PathBuf,
        /// How long we waited.
        waited: Duration,
        /// Its log file.
        log: PathBuf,
    },
}

/// Where a managed containerd keeps its things.
#[derive(Debug, Clone)]
pub struct ContainerdLayout {
    /// The containerd binary.
    pub binary: PathBuf,
    /// Persistent root (`root`): images, snapshots, metadata.
    pub root: PathBuf,
    /// Runtime state (`state`).
    pub state: PathBuf,
    /// The gRPC socket.
    pub socket: PathBuf,
    /// The directory the CNI config is written to.
    pub cni_conf_dir: PathBuf,
    /// The CNI plugin binaries.
    pub cni_bin_dir: PathBuf,
    /// The sandbox image.
    pub sandbox_image: String,
}

impl ContainerdLayout {
    /// The config file's content.
    pub fn config_toml(&self) -> String {
        format!(
            r#"# Written by coxswain-node-agent; rewritten at every start.
version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  # runc cannot lower oom_score_adj without CAP_SYS_RESOURCE.
  restrict_oom_score_adj = true
  sandbox_image = "{sandbox}"
  # A random port on loopback: several agents can share a machine.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # Pod network namespaces under our state directory, not the host's /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"#,
            root = self.root.display(),
            state = self.state.display(),
            socket = self.socket.display(),
            sandbox = self.sandbox_image,
            cni_bin = self.cni_bin_dir.display(),
            cni_conf = self.cni_conf_dir.display(),
        )
    }

    fn pid_file(&self) -> PathBuf {
        self.state.join("coxswain-containerd.pid")
    }

    fn config_file(&self) -> PathBuf {
        self.state.join("coxswain-containerd.toml")
    }

    /// Its log file.
    pub fn log_file(&self) -> PathBuf {
        self.root.join("containerd.log")
    }
}

/// A running containerd we started; stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct ManagedContainerd {
    layout: ContainerdLayout,
    child: Option<std::process::Child>,
}

fn mkdir(path: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(path).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.split(' ').nth(2) == Some("Z"))
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILL.
fn terminate(pid: i32, grace: Duration) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

impl ManagedContainerd {
    /// Writes the config and starts containerd, after stopping one a
    /// previous agent left running on the same state directory. Returns once
    /// the CRI service answers (at most `wait`).
    pub async fn start(layout: ContainerdLayout, wait: Duration) -> Result<Self, Error> {
        for dir in [&layout.root, &layout.state, &layout.cni_conf_dir] {
            mkdir(dir)?;
        }
        if let Some(parent) = layout.socket.parent() {
            mkdir(parent)?;
        }
        if let Some(pid) = std::fs::read_to_string(layout.pid_file())
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            && alive(pid)
            && std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.contains("containerd"))
        {
            warn!(pid, "stopping the containerd a previous agent left running");
            tokio::task::spawn_blocking(move || terminate(pid, Duration::from_secs(10)))
                .await
                .ok();
        }
        let _ = std::fs::remove_file(&layout.socket);
        let config = layout.config_file();
        std::fs::write(&config, layout.config_toml()).map_err(|source| Error::Write {
            path: config.clone(),
            source,
        })?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(layout.log_file())
            .map_err(|source| Error::Write {
                path: layout.log_file(),
                source,
            })?;
        let log2 = log.try_clone().map_err(|source| Error::Write {
            path: layout.log_file(),
            source,
        })?;
        let child = std::process::Command::new(&layout.binary)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|source| Error::Spawn {
                binary: layout.binary.clone(),
                source,
            })?;
        let _ = std::fs::write(layout.pid_file(), child.id().to_string());
        info!(pid = child.id(), socket = %layout.socket.display(), "started containerd");
        let managed = ManagedContainerd {
            layout,
            child: Some(child),
        };
        let started = Instant::now();
        loop {
            if managed.layout.socket.exists()
                && let Ok(cri) = crate::cri::Cri::connect(&managed.layout.socket).await
                && cri.version().await.is_ok()
            {
                return Ok(managed);
            }
            if started.elapsed() > wait {
                return Err(Error::NotReady {
                    socket: managed.layout.socket.clone(),
                    waited: wait,
                    log: managed.layout.log_file(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The socket it serves.
    pub fn socket(&self) -> &Path {
        &self.layout.socket
    }
}

impl Drop for ManagedContainerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(child.id() as i32, Duration::from_secs(10));
            let _ = child.wait();
            let _ = std::fs::remove_file(self.layout.pid_file());
            info!("stopped containerd");
        }
    }
}
