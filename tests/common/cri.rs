//! A CRI client, as the kubelet is one: the runtime and image services of
//! containerd's CRI plugin (API `runtime.v1`), over the daemon's unix socket.
//! Each call blocks, so the tests read as the other client flows do.

// Each test binary that speaks CRI uses a part of it.
#![allow(dead_code, unused_imports)]

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Status;

pub use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ImageSpec, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
};

pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl Cri {
    pub fn connect(socket: &Path) -> Cri {
        // The channel's connection runs on this runtime, whenever a call
        // blocks on it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let socket = socket.to_path_buf();
        let channel = rt
            .block_on(async {
                // gRPC needs a URI; the connector ignores it and dials the
                // socket.
                Endpoint::from_static("http://localhost")
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let socket = socket.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(socket).await?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                        }
                    }))
                    .await
            })
            .expect("connect to containerd's socket");
        Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        }
    }

    /// The runtime's name and version and the CRI version it speaks.
    pub fn version(&mut self) -> Result<cri::VersionResponse, Status> {
        let req = cri::VersionRequest {
            version: "v1".into(),
        };
        let rt = &self.rt;
        rt.block_on(self.runtime.version(req))
            .map(|r| r.into_inner())
    }

    /// Whether the CRI plugin knows `image` (its image store follows
    /// containerd's `k8s.io` namespace, a little after each change).
    pub fn has_image(&mut self, image: &str) -> Result<bool, Status> {
        let req = cri::ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        };
        let rt = &self.rt;
        rt.block_on(self.images.image_status(req))
            .map(|r| r.into_inner().image.is_some())
    }

    /// Wait until the CRI plugin knows `image`.
    pub fn wait_for_image(&mut self, image: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            match self.has_image(image) {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => panic!("ImageStatus {image}: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "the CRI plugin does not see {image} after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// RunPodSandbox with a runtime handler; the sandbox id.
    pub fn run_pod(&mut self, config: &PodSandboxConfig, handler: &str) -> Result<String, Status> {
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        let rt = &self.rt;
        rt.block_on(self.runtime.run_pod_sandbox(req))
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    /// CreateContainer in a pod; the container id.
    pub fn create_container(
        &mut self,
        pod: &str,
        config: ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> Result<String, Status> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        let rt = &self.rt;
        rt.block_on(self.runtime.create_container(req))
            .map(|r| r.into_inner().container_id)
    }

    pub fn start_container(&mut self, id: &str) -> Result<(), Status> {
        let req = cri::StartContainerRequest {
            container_id: id.into(),
        };
        let rt = &self.rt;
        rt.block_on(self.runtime.start_container(req)).map(|_| ())
    }

    /// StopContainer: the stop signal, then SIGKILL after `timeout` seconds.
    pub fn stop_container(&mut self, id: &str, timeout: i64) -> Result<(), Status> {
        let req = cri::StopContainerRequest {
            container_id: id.into(),
            timeout,
        };
        let rt = &self.rt;
        rt.block_on(self.runtime.stop_container(req)).map(|_| ())
    }

    pub fn container_status(&mut self, id: &str) -> Result<cri::ContainerStatus, Status> {
        let req = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        let rt = &self.rt;
        rt.block_on(self.runtime.container_status(req))
            .map(|r| r.into_inner().status.expect("ContainerStatus has a status"))
    }

    /// Wait until container `id` has exited; its last status.
    pub fn wait_exited(&mut self, id: &str, timeout: Duration) -> cri::ContainerStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self
                .container_status(id)
                .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"));
            if status.state == ContainerState::ContainerExited as i32 {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} has not exited after {timeout:?}: {status:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn stop_pod(&mut self, id: &str) -> Result<(), Status> {
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        let rt = &self.rt;
        rt.block_on(self.runtime.stop_pod_sandbox(req)).map(|_| ())
    }

    pub fn remove_pod(&mut self, id: &str) -> Result<(), Status> {
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        let rt = &self.rt;
        rt.block_on(self.runtime.remove_pod_sandbox(req))
            .map(|_| ())
    }

    /// The pod's IP, as PodSandboxStatus reports it (the CNI plugin's).
    pub fn pod_ip(&mut self, id: &str) -> Result<String, Status> {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        };
        let rt = &self.rt;
        rt.block_on(self.runtime.pod_sandbox_status(req)).map(|r| {
            r.into_inner()
                .status
                .and_then(|s| s.network)
                .map(|n| n.ip)
                .unwrap_or_default()
        })
    }

    /// The ids of the pods the CRI plugin knows.
    pub fn pods(&mut self) -> Result<Vec<String>, Status> {
        let req = cri::ListPodSandboxRequest { filter: None };
        let rt = &self.rt;
        rt.block_on(self.runtime.list_pod_sandbox(req))
            .map(|r| r.into_inner().items.into_iter().map(|p| p.id).collect())
    }
}

/// The lines a container wrote, from a CRI log file (each line is
/// `TIME STREAM TAG TEXT`, as containerd writes them for the kubelet).
pub fn log_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .map(String::from)
        .collect()
}
