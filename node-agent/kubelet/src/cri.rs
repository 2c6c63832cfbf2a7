//! The CRI v1 client: containerd's RuntimeService and ImageService over its
//! unix socket (tonic + the `k8s-cri` bindings), with a timeout on every call.

use std::{
    collections::HashMap,
    future::Future,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

pub use cri::{ContainerConfig, ContainerStatus, PodSandboxConfig};

use crate::metrics::{HistogramFamily, OperationLabels};

/// Label: the pod's UID, on every sandbox and container.
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
/// Label: the pod's name.
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
/// Label: the pod's namespace.
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Label: the container's name in the pod spec.
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// Errors of CRI calls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be reached.
    #[error("failed to connect to the container runtime at {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// A call failed.
    #[error("failed to {call}: {status}")]
    Call {
        /// What was attempted.
        call: String,
        /// The gRPC status.
        status: Box<tonic::Status>,
    },
}

impl Error {
    /// The gRPC code, when the runtime answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Call { status, .. } => Some(status.code()),
            Error::Connect { .. } => None,
        }
    }

    /// The runtime's message (without our context).
    pub fn message(&self) -> String {
        match self {
            Error::Call { status, .. } => status.message().to_owned(),
            Error::Connect { source, .. } => source.to_string(),
        }
    }
}

/// Result of CRI calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A CRI client (cheap to clone: one HTTP/2 connection underneath).
#[derive(Clone, Debug)]
pub struct Cri {
    runtime: cri::runtime_service_client::RuntimeServiceClient<Channel>,
    images: cri::image_service_client::ImageServiceClient<Channel>,
    socket: PathBuf,
    /// Where call durations go (the kubelet's metrics), if anywhere.
    operations: Option<HistogramFamily<OperationLabels>>,
}

/// Timeout of ordinary calls (runc create and CNI setup are the slow ones).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

fn call_err(call: impl Into<String>) -> impl FnOnce(tonic::Status) -> Error {
    let call = call.into();
    move |status| Error::Call {
        call,
        status: Box::new(status),
    }
}

fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// Latest-first ordering key of a container: (attempt, created_at).
pub fn container_order(c: &cri::Container) -> (u32, i64) {
    (c.metadata.as_ref().map_or(0, |m| m.attempt), c.created_at)
}

impl Cri {
    /// Connects to the runtime's unix socket (lazily: the first call dials).
    pub async fn connect(socket: &Path) -> Result<Cri> {
        let path = socket.to_owned();
        let dial = path.clone();
        let channel =
            Endpoint::try_from("http://[::]:50051")
                .expect("static URI")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let dial = dial.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(dial).await?))
                    }
                }))
                .await
                .map_err(|source| Error::Connect {
                    path: path.clone(),
                    source,
                })?;
        Ok(Cri {
            runtime: cri::runtime_service_client::RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(64 << 20),
            images: cri::image_service_client::ImageServiceClient::new(channel)
                .max_decoding_message_size(64 << 20),
            socket: path,
            operations: None,
        })
    }

    /// The same client, recording the duration of every call in `operations`.
    pub(crate) fn with_metrics(mut self, operations: HistogramFamily<OperationLabels>) -> Cri {
        self.operations = Some(operations);
        self
    }

    /// Runs one call, recording how long it took under `operation_type`.
    async fn timed<T>(&self, operation_type: &'static str, call: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let out = call.await;
        if let Some(ops) = &self.operations {
            ops.get_or_create(&OperationLabels { operation_type })
                .observe(started.elapsed().as_secs_f64());
        }
        out
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `Version`: the runtime's name and version (`containerd`, `v1.6.20`).
    pub async fn version(&self) -> Result<(String, String)> {
        let r = self
            .timed(
                "version",
                self.runtime.clone().version(request(
                    cri::VersionRequest::default(),
                    Duration::from_secs(5),
                )),
            )
            .await
            .map_err(call_err("get the runtime version"))?
            .into_inner();
        Ok((r.runtime_name, r.runtime_version))
    }

    /// `RunPodSandbox`: returns the sandbox id.
    pub async fn run_sandbox(&self, config: PodSandboxConfig) -> Result<String> {
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        Ok(self
            .timed(
                "run_podsandbox",
                self.runtime.clone().run_pod_sandbox(request(
                    cri::RunPodSandboxRequest {
                        config: Some(config),
                        runtime_handler: String::new(),
                    },
                    CALL_TIMEOUT,
                )),
            )
            .await
            .map_err(call_err(format!("run the sandbox of pod {name}")))?
            .into_inner()
            .pod_sandbox_id)
    }

    /// `StopPodSandbox` (idempotent).
    pub async fn stop_sandbox(&self, id: &str) -> Result<()> {
        self.timed(
            "stop_podsandbox",
            self.runtime.clone().stop_pod_sandbox(request(
                cri::StopPodSandboxRequest {
                    pod_sandbox_id: id.to_owned(),
                },
                CALL_TIMEOUT,
            )),
        )
        .await
        .map_err(call_err(format!("stop sandbox {id}")))?;
        Ok(())
    }

    /// `RemovePodSandbox` (idempotent; removes its containers too).
    pub async fn remove_sandbox(&self, id: &str) -> Result<()> {
        self.timed(
            "remove_podsandbox",
            self.runtime.clone().remove_pod_sandbox(request(
                cri::RemovePodSandboxRequest {
                    pod_sandbox_id: id.to_owned(),
                },
                CALL_TIMEOUT,
            )),
        )
        .await
        .map_err(call_err(format!("remove sandbox {id}")))?;
        Ok(())
    }

    /// `PodSandboxStatus`: the sandbox's state and IP addresses.
    pub async fn sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus> {
        self.timed(
            "podsandbox_status",
            self.runtime.clone().pod_sandbox_status(request(
                cri::PodSandboxStatusRequest {
                    pod_sandbox_id: id.to_owned(),
                    verbose: false,
                },
                CALL_TIMEOUT,
            )),
        )
        .await
        .map_err(call_err(format!("get the status of sandbox {id}")))?
        .into_inner()
        .status
        .ok_or_else(|| Error::Call {
            call: format!("get the status of sandbox {id}"),
            status: Box::new(tonic::Status::internal("empty status")),
        })
    }

    /// `ListPodSandbox` with a label filter.
    pub async fn list_sandboxes(
        &self,
        labels: HashMap<String, String>,
    ) -> Result<Vec<cri::PodSandbox>> {
        Ok(self
            .timed(
                "list_podsandbox",
                self.runtime.clone().list_pod_sandbox(request(
                    cri::ListPodSandboxRequest {
                        filter: Some(cri::PodSandboxFilter {
                            label_selector: labels,
                            ..Default::default()
                        }),
                    },
                    CALL_TIMEOUT,
                )),
            )
            .await
            .map_err(call_err("list sandboxes"))?
            .into_inner()
            .items)
    }

    /// `ListContainers` with a label filter.
    pub async fn list_containers(
        &self,
        labels: HashMap<String, String>,
    ) -> Result<Vec<cri::Container>> {
        Ok(self
            .timed(
                "list_containers",
                self.runtime.clone().list_containers(request(
                    cri::ListContainersRequest {
                        filter: Some(cri::ContainerFilter {
                            label_selector: labels,
                            ..Default::default()
                        }),
                    },
                    CALL_TIMEOUT,
                )),
            )
            .await
            .map_err(call_err("list containers"))?
            .into_inner()
            .containers)
    }

    /// `CreateContainer`: returns the container id.
    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: ContainerConfig,
        sandbox_config: PodSandboxConfig,
    ) -> Result<String> {
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        Ok(self
            .timed(
                "create_container",
                self.runtime.clone().create_container(request(
                    cri::CreateContainerRequest {
                        pod_sandbox_id: sandbox_id.to_owned(),
                        config: Some(config),
                        sandbox_config: Some(sandbox_config),
                    },
                    CALL_TIMEOUT,
                )),
            )
            .await
            .map_err(call_err(format!("create container {name}")))?
            .into_inner()
            .container_id)
    }

    /// `StartContainer` of a created container (`name` for messages).
    pub async fn start_container(&self, id: &str, name: &str) -> Result<()> {
        self.timed(
            "start_container",
            self.runtime.clone().start_container(request(
                cri::StartContainerRequest {
                    container_id: id.to_owned(),
                },
                CALL_TIMEOUT,
            )),
        )
        .await
        .map_err(call_err(format!("start container {name} ({id})")))?;
        Ok(())
    }

    /// `StopContainer`: the stop signal, then SIGKILL after `timeout_s`.
    pub async fn stop_container(&self, id: &str, timeout_s: i64) -> Result<()> {
        self.timed(
            "stop_container",
            self.runtime.clone().stop_container(request(
                cri::StopContainerRequest {
                    container_id: id.to_owned(),
                    timeout: timeout_s,
                },
                Duration::from_secs(timeout_s.max(0) as u64) + CALL_TIMEOUT,
            )),
        )
        .await
        .map_err(call_err(format!("stop container {id}")))?;
        Ok(())
    }

    /// `RemoveContainer`.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        self.timed(
            "remove_container",
            self.runtime.clone().remove_container(request(
                cri::RemoveContainerRequest {
                    container_id: id.to_owned(),
                },
                CALL_TIMEOUT,
            )),
        )
        .await
        .map_err(call_err(format!("remove container {id}")))?;
        Ok(())
    }

    /// `ContainerStatus`.
    pub async fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        self.timed(
            "container_status",
            self.runtime.clone().container_status(request(
                cri::ContainerStatusRequest {
                    container_id: id.to_owned(),
                    verbose: false,
                },
                CALL_TIMEOUT,
            )),
        )
        .await
        .map_err(call_err(format!("get the status of container {id}")))?
        .into_inner()
        .status
        .ok_or_else(|| Error::Call {
            call: format!("get the status of container {id}"),
            status: Box::new(tonic::Status::internal("empty status")),
        })
    }

    /// `ExecSync`: runs `cmd` in the container; returns (exit code, stdout, stderr).
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<(i32, Vec<u8>, Vec<u8>)> {
        let r = self
            .timed(
                "exec_sync",
                self.runtime.clone().exec_sync(request(
                    cri::ExecSyncRequest {
                        container_id: id.to_owned(),
                        cmd,
                        timeout: timeout.as_secs().max(1) as i64,
                    },
                    timeout + Duration::from_secs(5),
                )),
            )
            .await
            .map_err(call_err(format!("exec in container {id}")))?
            .into_inner();
        Ok((r.exit_code, r.stdout, r.stderr))
    }

    /// `Exec`: a streaming session running `cmd` in the container; returns the URL of the
    /// runtime's streaming server that serves it (once).
    pub async fn exec(&self, id: &str, cmd: Vec<String>, stdio: Stdio) -> Result<String> {
        Ok(self
            .timed(
                "exec",
                self.runtime.clone().exec(request(
                    cri::ExecRequest {
                        container_id: id.to_owned(),
                        cmd,
                        tty: stdio.tty,
                        stdin: stdio.stdin,
                        stdout: stdio.stdout,
                        // With a terminal, stderr is the terminal (CRI: stderr must be false).
                        stderr: stdio.stderr && !stdio.tty,
                    },
                    CALL_TIMEOUT,
                )),
            )
            .await
            .map_err(call_err(format!("exec in container {id}")))?
            .into_inner()
            .url)
    }

    /// `Attach`: a streaming session attached to the container's own stdio; returns the
    /// URL of the runtime's streaming server that serves it (once).
    pub async fn attach(&self, id: &str, stdio: Stdio) -> Result<String> {
        Ok(self
            .timed(
                "attach",
                self.runtime.clone().attach(request(
                    cri::AttachRequest {
                        container_id: id.to_owned(),
                        stdin: stdio.stdin,
                        tty: stdio.tty,
                        stdout: stdio.stdout,
                        stderr: stdio.stderr && !stdio.tty,
                    },
                    CALL_TIMEOUT,
                )),
            )
            .await
            .map_err(call_err(format!("attach to container {id}")))?
            .into_inner()
            .url)
    }

    /// `ImageStatus`: the image's id when present.
    pub async fn image_id(&self, image: &str) -> Result<Option<String>> {
        let r = self
            .timed(
                "image_status",
                self.images.clone().image_status(request(
                    cri::ImageStatusRequest {
                        image: Some(cri::ImageSpec {
                            image: image.to_owned(),
                            ..Default::default()
                        }),
                        verbose: false,
                    },
                    CALL_TIMEOUT,
                )),
            )
            .await
            .map_err(call_err(format!("get the status of image {image}")))?
            .into_inner();
        Ok(r.image.map(|i| i.id))
    }

    /// `PullImage`, bounded by `timeout`; returns the image reference.
    pub async fn pull_image(&self, image: &str, timeout: Duration) -> Result<String> {
        Ok(self
            .timed(
                "pull_image",
                self.images.clone().pull_image(request(
                    cri::PullImageRequest {
                        image: Some(cri::ImageSpec {
                            image: image.to_owned(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    timeout,
                )),
            )
            .await
            .map_err(call_err(format!("pull image {image}")))?
            .into_inner()
            .image_ref)
    }
}

/// Which streams a streaming session (exec, attach) carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stdio {
    /// Standard input.
    pub stdin: bool,
    /// Standard output.
    pub stdout: bool,
    /// Standard error (never with a terminal).
    pub stderr: bool,
    /// A terminal.
    pub tty: bool,
}

/// A label selector map from pairs.
pub fn labels<const N: usize>(pairs: [(&str, &str); N]) -> HashMap<String, String> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}
