//! A local node for the real control plane: what a kubelet and a container
//! runtime do, for the pods wva's tests run, with the project's own binaries
//! as the containers.
//!
//! The node registers itself, renews its Lease, binds the pending pods of the
//! namespaces it serves (no scheduler runs) and runs each bound pod:
//!
//! - **Containers are processes.** An image naming `wva-aggregator`,
//!   `wva-agent` or `vllm` runs that binary (`vllm-sim` for vLLM); one naming
//!   prometheus-adapter or KEDA's operator or metrics server runs that
//!   component as `scripts/cluster tool` builds it; one naming Redis
//!   (`redis:…`) or its exporter (`…/redis_exporter`) runs Debian's
//!   `redis-server` or `prometheus-redis-exporter`; each with the
//!   container's arguments and environment. A pod with any other image is
//!   left pending. Native sidecars (init containers with `restartPolicy:
//!   Always`) start with the others. A container that exits is started
//!   again as the pod's `restartPolicy` says, after a kubelet's back-off.
//! - **Each pod has its own address** in the test pod network
//!   (198.18.0.0/15, see [`pod_network`]), from a /24 of the node's own. All
//!   pods share one network namespace, where a pod's containers would share
//!   one of their own, so in their arguments and environment `0.0.0.0`,
//!   `127.0.0.1` and `localhost` stand for the pod's address.
//! - **Cluster DNS**: each pod's processes run in a mount namespace of their
//!   own whose `/etc/hosts` names every Service
//!   (`NAME.NAMESPACE.svc[.cluster.local]`) with its endpoints' addresses:
//!   the ready ones, or all of a headless Service with
//!   `publishNotReadyAddresses`, as cluster DNS answers. With no kube-proxy,
//!   a ClusterIP Service's name stands for its ready endpoints too. The file
//!   follows the endpoints while the pod runs.
//! - **Volumes are files**: ConfigMaps and Secrets written out (a pod waits
//!   for one it requires, and the files follow changes while it runs),
//!   emptyDirs, projected service-account tokens obtained from the
//!   TokenRequest API bound to the pod with their audience and expiry, and
//!   paths under a mount rewritten to the files, also in `--flag=PATH`
//!   arguments. Every process also gets its ServiceAccount's in-cluster
//!   configuration: the token, CA and namespace files where a kubelet mounts
//!   them (`/var/run/secrets/kubernetes.io/serviceaccount`, bind-mounted in
//!   the pod's mount namespace) with `KUBERNETES_SERVICE_HOST` and `_PORT`,
//!   and the same token in a `KUBECONFIG` file.
//! - **Status as a kubelet reports it**: Running with the pod's address at
//!   start, Ready once every readiness probe (HTTP or HTTPS GET, the
//!   certificate not verified) answers 2xx.
//! - **Deletion**: a pod marked for deletion has its processes stopped
//!   (SIGTERM, then SIGKILL) and is then removed, as a kubelet finishes a
//!   graceful delete.
//!
//! Not modelled: a network namespace per pod, liveness probes, resource
//! limits, ClusterIPs themselves, and volumes mounted at their paths.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, Node, Pod, PodSpec, Secret, Service, Volume,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::bin;
use crate::controlplane::{ControlPlane, request_token, tool};

/// The test pod network: RFC 2544's benchmarking range, routed to loopback
/// inside the tests' own network namespace (`scripts/test-network`), so
/// every address in it is local, and unlike loopback addresses the API
/// server accepts them in Endpoints and EndpointSlices.
pub const POD_NETWORK: &str = "198.18.0.0/15";

/// Fails unless the pod network is local here, saying how to get it.
pub fn pod_network() -> anyhow::Result<()> {
    let probe = std::net::TcpListener::bind((Ipv4Addr::new(198, 18, 0, 1), 0));
    if probe.is_err() {
        bail!(
            "the test pod network {POD_NETWORK} is not routed to loopback here: run the tests \
             through scripts/test, or as scripts/test-network cargo test …, which give them a \
             network namespace of their own"
        );
    }
    Ok(())
}

/// Nodes started by one test process take subnets 198.18.1.0/24,
/// 198.18.2.0/24, … of the pod network, so tests running side by side never
/// share an address.
static NEXT_SUBNET: AtomicU8 = AtomicU8::new(1);
/// How long a pod's processes get between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// A running local node; dropping it stops every pod's processes.
pub struct LocalNode {
    pub name: String,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

struct State {
    name: String,
    client: kube::Client,
    server: String,
    ca: String,
    dir: PathBuf,
    namespaces: Vec<String>,
    /// Pods whose processes [`LocalNode::crash`] killed: not started again.
    crashed: Mutex<std::collections::BTreeSet<String>>,
    /// Pods being started, by uid.
    starting: Mutex<std::collections::BTreeSet<String>>,
    /// The third octet of this node's addresses.
    subnet: u8,
    next_ip: Mutex<u8>,
    pods: Mutex<BTreeMap<String, RunningPod>>,
}

/// One pod's processes, by uid.
struct RunningPod {
    namespace: String,
    name: String,
    ip: IpAddr,
    children: Vec<ContainerProcess>,
}

/// One container's process.
struct ContainerProcess {
    name: String,
    launch: Launch,
    child: Child,
    /// The exit code of its previous process, once restarted.
    last_exit: Option<i32>,
    restarts: u32,
}

impl LocalNode {
    /// Registers node `name` and starts running the pods of `namespaces`.
    pub async fn start(
        plane: &ControlPlane,
        name: &str,
        namespaces: &[&str],
    ) -> anyhow::Result<LocalNode> {
        pod_network()?;
        let client = plane.client().await?;
        let kubeconfig = kube::config::Kubeconfig::read_from(plane.kubeconfig())?;
        let ca = kubeconfig
            .clusters
            .first()
            .and_then(|c| c.cluster.as_ref())
            .and_then(|c| c.certificate_authority_data.clone())
            .context("kubeconfig without CA")?;
        let dir = plane.dir().join("node").join(name);
        std::fs::create_dir_all(&dir)?;
        let state = Arc::new(State {
            name: name.into(),
            client: client.clone(),
            server: plane.server()?,
            ca,
            dir,
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
            crashed: Mutex::default(),
            starting: Mutex::default(),
            subnet: NEXT_SUBNET.fetch_add(1, Ordering::Relaxed),
            next_ip: Mutex::new(0),
            pods: Mutex::default(),
        });
        register(&client, name, state.node_ip()).await?;
        let heartbeat = tokio::spawn(heartbeat(client.clone(), name.to_string()));
        let pods = tokio::spawn(run_pods(state.clone()));
        Ok(LocalNode {
            name: name.into(),
            state,
            tasks: vec![heartbeat, pods],
        })
    }

    /// The address of pod `namespace/name`, while it runs here.
    pub fn pod_ip(&self, namespace: &str, name: &str) -> Option<IpAddr> {
        let pods = self.state.pods.lock().unwrap_or_else(|p| p.into_inner());
        pods.values()
            .find(|p| p.namespace == namespace && p.name == name)
            .map(|p| p.ip)
    }

    /// Kills pod `namespace/name`'s processes at once (SIGKILL), as a node
    /// crash would; the pod object stays as it was.
    pub async fn crash(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        let pod = {
            let mut pods = self.state.pods.lock().unwrap_or_else(|p| p.into_inner());
            let uid = pods
                .iter()
                .find(|(_, p)| p.namespace == namespace && p.name == name)
                .map(|(uid, _)| uid.clone())
                .with_context(|| format!("pod {namespace}/{name} does not run here"))?;
            self.state
                .crashed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(uid.clone());
            pods.remove(&uid)
        };
        for mut container in pod.into_iter().flat_map(|p| p.children) {
            let _ = container.child.kill().await;
        }
        Ok(())
    }

    /// The exit code of container `container` of pod `namespace/name`: of
    /// its process once that has ended, else of the one before it when it
    /// was restarted (`None` while its first process runs or if the pod is
    /// not here; -1 for a signal).
    pub fn exit_code(&self, namespace: &str, name: &str, container: &str) -> Option<i32> {
        let mut pods = self.state.pods.lock().unwrap_or_else(|p| p.into_inner());
        let pod = pods
            .values_mut()
            .find(|p| p.namespace == namespace && p.name == name)?;
        let container = pod.children.iter_mut().find(|c| c.name == container)?;
        match container.child.try_wait() {
            Ok(Some(status)) => Some(status.code().unwrap_or(-1)),
            _ => container.last_exit,
        }
    }

    /// A file of a volume of pod `namespace/name`, as its containers see it.
    pub fn volume_file(&self, namespace: &str, name: &str, volume: &str, file: &str) -> PathBuf {
        self.state
            .dir
            .join(format!("{namespace}_{name}"))
            .join("volumes")
            .join(volume)
            .join(file)
    }

    /// The log of container `container` of pod `namespace/name`.
    pub fn log(&self, namespace: &str, name: &str, container: &str) -> String {
        let path = self
            .state
            .dir
            .join(format!("{namespace}_{name}"))
            .join(format!("{container}.log"));
        std::fs::read_to_string(path).unwrap_or_default()
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // Children are killed on drop.
        self.state
            .pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

fn rfc3339(micros: bool) -> String {
    let now = SystemTime::now();
    if micros {
        humantime::format_rfc3339_micros(now).to_string()
    } else {
        humantime::format_rfc3339_seconds(now).to_string()
    }
}

impl State {
    /// The node's own address (its InternalIP).
    fn node_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.subnet, 254)
    }

    /// The API server's host and port, as the in-cluster environment
    /// (`KUBERNETES_SERVICE_HOST`, `_PORT`) gives them.
    fn api_host_and_port(&self) -> anyhow::Result<(String, String)> {
        let url: http::Uri = self.server.parse().context("the API server's URL")?;
        let host = url.host().context("API server URL without host")?;
        let port = url.port_u16().unwrap_or(443);
        Ok((host.to_string(), port.to_string()))
    }
}

async fn register(client: &kube::Client, name: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = rfc3339(false);
    let node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "wva test node is posting ready status",
                "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": ip.to_string()},
                          {"type": "Hostname", "address": name}],
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "250"},
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "250"},
        },
    }))?;
    nodes
        .create(&PostParams::default(), &node)
        .await
        .with_context(|| format!("register node {name}"))?;
    Ok(())
}

/// Renews the node's Lease every 10 s, as a kubelet does, so the node
/// lifecycle controller keeps it Ready.
async fn heartbeat(client: kube::Client, name: String) {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client, "kube-node-lease");
    loop {
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": rfc3339(true)},
        });
        if let Err(e) = leases
            .patch(
                &name,
                &PatchParams::apply("wva-test-node").force(),
                &Patch::Apply(&lease),
            )
            .await
        {
            eprintln!("local node {name}: lease renewal failed: {e}");
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

async fn run_pods(state: Arc<State>) {
    let pods: Api<Pod> = Api::all(state.client.clone());
    let events = watcher(pods, watcher::Config::default()).default_backoff();
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let pod = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => pod,
            Ok(watcher::Event::Delete(pod)) => {
                tokio::spawn(stop(state.clone(), pod));
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                eprintln!("local node {}: pod watch: {e}", state.name);
                continue;
            }
        };
        if let Err(e) = reconcile(&state, &pod).await {
            eprintln!(
                "local node {}: pod {}/{}: {e:#}",
                state.name,
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default()
            );
        }
    }
}

fn ident(pod: &Pod) -> (String, String, String) {
    let meta = &pod.metadata;
    let text = |s: &Option<String>| s.clone().unwrap_or_default();
    (text(&meta.namespace), text(&meta.name), text(&meta.uid))
}

async fn reconcile(state: &Arc<State>, pod: &Pod) -> anyhow::Result<()> {
    let (namespace, name, uid) = ident(pod);
    if !state.namespaces.contains(&namespace) {
        return Ok(());
    }
    let spec = pod.spec.as_ref().context("pod without spec")?;
    match spec.node_name.as_deref() {
        None => {
            if pod.metadata.deletion_timestamp.is_none() && runnable(spec) {
                bind(state, &namespace, &name).await?;
            }
            return Ok(());
        }
        Some(node) if node != state.name => return Ok(()),
        Some(_) => {}
    }
    if pod.metadata.deletion_timestamp.is_some() {
        // Off the watch loop: a graceful stop takes up to GRACE.
        let (state, pod) = (state.clone(), pod.clone());
        tokio::spawn(async move {
            stop(state.clone(), pod).await;
            finish_delete(&state, &namespace, &name, uid).await;
        });
        return Ok(());
    }
    let running = state
        .pods
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains_key(&uid);
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    let crashed = state
        .crashed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&uid);
    if running || finished || crashed {
        return Ok(());
    }
    let first = state
        .starting
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(uid.clone());
    if !first {
        return Ok(());
    }
    // Off the watch loop: a pod may wait for the Secrets it mounts.
    let (state, pod) = (state.clone(), pod.clone());
    tokio::spawn(async move {
        if let Err(e) = start(&state, &pod).await {
            eprintln!("local node {}: pod {namespace}/{name}: {e:#}", state.name);
        }
        state
            .starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&uid);
    });
    Ok(())
}

/// Removes a pod whose processes have stopped, as a kubelet finishes a
/// graceful delete (only that pod: the uid is a precondition).
async fn finish_delete(state: &State, namespace: &str, name: &str, uid: String) {
    let pods: Api<Pod> = Api::namespaced(state.client.clone(), namespace);
    let force = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    // Already gone is fine: the watch will say so.
    let _ = pods.delete(name, &force).await;
}

/// What a container runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    /// One of the workspace's binaries.
    Own(&'static str),
    /// A third-party component `scripts/cluster tool` builds.
    Tool(&'static str),
    /// A program of the machine's packages, on the `PATH` (`scripts/test`
    /// installs them).
    Installed(&'static str),
}

/// The program a container's image stands for.
fn program(container: &Container) -> Option<Program> {
    let image = container.image.as_deref().unwrap_or_default();
    let own = ["wva-aggregator", "wva-agent"]
        .into_iter()
        .find(|p| image.contains(p))
        .or_else(|| image.contains("vllm").then_some("vllm-sim"))
        .map(Program::Own);
    // Third-party images by name, the most specific first.
    let tool = [
        ("prometheus-adapter", "prometheus-adapter"),
        ("kedacore/keda-metrics-apiserver", "keda-metrics-apiserver"),
        (
            "kedacore/keda-admission-webhooks",
            "keda-admission-webhooks",
        ),
        ("kedacore/keda:", "keda-operator"),
    ]
    .into_iter()
    .find(|(name, _)| image.contains(name))
    .map(|(_, tool)| Program::Tool(tool));
    let installed = [
        ("redis_exporter", "prometheus-redis-exporter"),
        ("redis:", "redis-server"),
    ]
    .into_iter()
    .find(|(name, _)| image.contains(name))
    .map(|(_, program)| Program::Installed(program));
    own.or(tool).or(installed)
}

/// Where `program`'s executable is.
async fn executable(program: Program) -> anyhow::Result<PathBuf> {
    match program {
        Program::Own(name) => Ok(bin(name)),
        Program::Tool(name) => tool(name).await,
        Program::Installed(name) => {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
                .with_context(|| format!("{name} is not on the PATH (scripts/test installs it)"))
        }
    }
}

fn containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    sidecars.chain(spec.containers.iter())
}

fn runnable(spec: &PodSpec) -> bool {
    let plain_init = spec
        .init_containers
        .iter()
        .flatten()
        .any(|c| c.restart_policy.as_deref() != Some("Always"));
    !plain_init && containers(spec).all(|c| program(c).is_some())
}

async fn bind(state: &State, namespace: &str, name: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(state.client.clone(), namespace);
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": state.name},
    });
    pods.create_subresource::<_, serde_json::Value>(
        "binding",
        name,
        &PostParams::default(),
        &binding,
    )
    .await
    .context("bind")?;
    Ok(())
}

/// The next pod address: 198.18.<subnet>.1, .2, …
fn allocate(state: &State) -> anyhow::Result<IpAddr> {
    let mut next = state.next_ip.lock().unwrap_or_else(|p| p.into_inner());
    *next = next
        .checked_add(1)
        .filter(|n| *n < 254)
        .context("the node has run 253 pods: its subnet is full")?;
    Ok(IpAddr::V4(Ipv4Addr::new(198, 18, state.subnet, *next)))
}

/// Files standing for a pod's volumes, and how paths map onto them.
struct Mounts {
    /// (mount path in the container, local path)
    paths: Vec<(String, PathBuf)>,
}

impl Mounts {
    /// `value` (an argument, also `--flag=VALUE`, or an environment
    /// variable's value) with a path under a mount made local, and the
    /// pod's own addresses made its address.
    fn rewrite(&self, value: &str, ip: IpAddr) -> String {
        let (flag, path) = match value.split_once('=') {
            Some((flag, path)) if flag.starts_with("--") => (format!("{flag}="), path),
            _ => (String::new(), value),
        };
        let mut value = self
            .paths
            .iter()
            .find_map(|(mount, local)| {
                let rest = path.strip_prefix(mount.as_str())?;
                Some(format!("{flag}{}{rest}", local.display()))
            })
            .unwrap_or_else(|| value.to_string());
        for host in ["0.0.0.0", "127.0.0.1", "localhost"] {
            value = replace_host(&value, host, &ip.to_string());
        }
        value
    }
}

/// `value` with every occurrence of `host` that stands alone (not part of a
/// longer name or address, such as `10.0.0.0`) replaced by `with`.
fn replace_host(value: &str, host: &str, with: &str) -> String {
    let part_of_name = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '-';
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find(host) {
        let (before, after) = (&rest[..at], &rest[at + host.len()..]);
        let alone = !before.ends_with(part_of_name) && !after.starts_with(part_of_name);
        out.push_str(before);
        out.push_str(if alone { with } else { host });
        rest = after;
    }
    out.push_str(rest);
    out
}

async fn start(state: &Arc<State>, pod: &Pod) -> anyhow::Result<()> {
    let (namespace, name, uid) = ident(pod);
    let spec = pod.spec.as_ref().context("pod without spec")?;
    let pod_dir = state.dir.join(format!("{namespace}_{name}"));
    std::fs::create_dir_all(&pod_dir)?;
    let account = spec.service_account_name.as_deref().unwrap_or("default");
    let volumes = write_volumes(state, pod, &pod_dir).await?;
    let ip = allocate(state)?;
    let kubeconfig = pod_dir.join("kubeconfig");
    let bound = Some((name.as_str(), uid.as_str()));
    let token = request_token(&state.client, &namespace, account, &[], bound, 3600).await?;
    write_kubeconfig(state, &kubeconfig, account, &token)?;

    let hosts = pod_dir.join("hosts");
    std::fs::write(&hosts, hosts_file(state).await?)?;
    let in_cluster = pod_dir.join("serviceaccount");
    write_in_cluster_files(state, &in_cluster, &namespace, &token)?;

    let mut children = Vec::new();
    for container in containers(spec) {
        let mounts = Mounts {
            paths: container
                .volume_mounts
                .iter()
                .flatten()
                .filter_map(|m| {
                    let local = volumes.get(&m.name)?;
                    Some((m.mount_path.clone(), local.clone()))
                })
                .collect(),
        };
        let program = program(container).context("unrunnable container")?;
        // The pod's /etc/hosts and its service account's in-cluster files,
        // bind-mounted in a mount namespace of its own.
        let mut args: Vec<String> = ["--mount", "--propagation", "private", "--", "/bin/sh", "-c"]
            .map(String::from)
            .into();
        args.push(format!(
            r#"/bin/mount --bind "$0" /etc/hosts && mkdir -p {IN_CLUSTER} && /bin/mount --bind "$1" {IN_CLUSTER} && shift && exec "$@""#
        ));
        args.push(hosts.display().to_string());
        args.push(in_cluster.display().to_string());
        args.push(executable(program).await?.display().to_string());
        let (api_host, api_port) = state.api_host_and_port()?;
        let mut env = vec![
            ("KUBECONFIG".to_string(), kubeconfig.display().to_string()),
            ("KUBERNETES_SERVICE_HOST".into(), api_host),
            ("KUBERNETES_SERVICE_PORT".into(), api_port),
            (
                "RUST_LOG".into(),
                std::env::var("WVA_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            ),
        ];
        for var in container.env.iter().flatten() {
            if let Some(value) = env_value(state, pod, ip, var).await? {
                env.push((var.name.clone(), mounts.rewrite(&value, ip)));
            }
        }
        args.extend(
            container
                .args
                .iter()
                .flatten()
                .map(|a| mounts.rewrite(a, ip)),
        );
        if program == Program::Own("vllm-sim") {
            args.extend(["--host".to_string(), ip.to_string()]);
        }
        let launch = Launch {
            args,
            env,
            log: pod_dir.join(format!("{}.log", container.name)),
        };
        let child = launch
            .spawn()
            .with_context(|| format!("start container {}", container.name))?;
        children.push(ContainerProcess {
            name: container.name.clone(),
            launch,
            child,
            last_exit: None,
            restarts: 0,
        });
    }
    state.pods.lock().unwrap_or_else(|p| p.into_inner()).insert(
        uid.clone(),
        RunningPod {
            namespace: namespace.clone(),
            name: name.clone(),
            ip,
            children,
        },
    );
    report(state, &namespace, &name, ip, false).await?;
    tokio::spawn(await_ready(state.clone(), pod.clone(), ip));
    tokio::spawn(sync_files(state.clone(), pod.clone(), pod_dir));
    let policy = spec.restart_policy.clone().unwrap_or("Always".into());
    tokio::spawn(restart_exited(state.clone(), uid, policy));
    Ok(())
}

/// How a container's process is started, again after it exits.
struct Launch {
    /// `unshare`'s arguments, the container's after them.
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Where its output goes (appended across restarts).
    log: PathBuf,
}

impl Launch {
    fn spawn(&self) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        Ok(Command::new("/usr/bin/unshare")
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?)
    }
}

/// Restarts the pod's containers that exit, as its `restartPolicy` says
/// (`Always` by default, `OnFailure`, `Never`), after a kubelet's back-off:
/// 10 s, doubling up to 5 minutes. Ends when the pod stops here.
async fn restart_exited(state: Arc<State>, uid: String, policy: String) {
    const FIRST: Duration = Duration::from_secs(10);
    const MOST: Duration = Duration::from_secs(300);
    let mut due: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
    loop {
        {
            let mut pods = state.pods.lock().unwrap_or_else(|p| p.into_inner());
            let Some(pod) = pods.get_mut(&uid) else {
                return;
            };
            let now = tokio::time::Instant::now();
            for container in &mut pod.children {
                let Ok(Some(status)) = container.child.try_wait() else {
                    continue;
                };
                let code = status.code().unwrap_or(-1);
                let restart = match policy.as_str() {
                    "Never" => false,
                    "OnFailure" => code != 0,
                    _ => true,
                };
                if !restart {
                    continue;
                }
                let backoff = (FIRST * 2u32.saturating_pow(container.restarts)).min(MOST);
                let at = *due.entry(container.name.clone()).or_insert(now + backoff);
                if now < at {
                    continue;
                }
                due.remove(&container.name);
                match container.launch.spawn() {
                    Ok(child) => {
                        container.last_exit = Some(code);
                        container.restarts += 1;
                        container.child = child;
                    }
                    Err(e) => eprintln!(
                        "local node {}: restart {}: {e:#}",
                        state.name, container.name
                    ),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// While the pod runs, keeps its volumes' files and its `/etc/hosts`
/// current (the file is rewritten in place: it is bind-mounted).
async fn sync_files(state: Arc<State>, pod: Pod, pod_dir: PathBuf) {
    let (namespace, name, uid) = ident(&pod);
    let hosts = pod_dir.join("hosts");
    let running = || {
        state
            .pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&uid)
    };
    while running() {
        let synced = async {
            refresh_volumes(&state, &pod, &pod_dir).await?;
            let text = hosts_file(&state).await?;
            if std::fs::read_to_string(&hosts).ok().as_deref() != Some(text.as_str()) {
                std::fs::write(&hosts, text)?;
            }
            anyhow::Ok(())
        };
        if let Err(e) = synced.await {
            eprintln!(
                "local node {}: pod {namespace}/{name}: sync: {e:#}",
                state.name
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `/etc/hosts` with every Service's name and endpoint addresses: a
/// headless Service's as cluster DNS answers them, and with no kube-proxy
/// for ClusterIPs, a ClusterIP Service's name stands for its ready
/// endpoints too.
async fn hosts_file(state: &State) -> anyhow::Result<String> {
    let services: Api<Service> = Api::all(state.client.clone());
    let slices: Api<EndpointSlice> = Api::all(state.client.clone());
    let slices = slices.list(&ListParams::default()).await?.items;
    let mut hosts = String::from("127.0.0.1 localhost\n");
    for service in services.list(&ListParams::default()).await?.items {
        let Some(spec) = &service.spec else { continue };
        let namespace = service.metadata.namespace.clone().unwrap_or_default();
        let name = service.metadata.name.clone().unwrap_or_default();
        let not_ready_too = spec.publish_not_ready_addresses == Some(true);
        let owned = |slice: &&EndpointSlice| {
            let labels = slice.metadata.labels.as_ref();
            slice.metadata.namespace.as_deref() == Some(namespace.as_str())
                && labels.and_then(|l| l.get("kubernetes.io/service-name")) == Some(&name)
        };
        for endpoint in slices.iter().filter(owned).flat_map(|s| &s.endpoints) {
            let ready = endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(true);
            if !(ready || not_ready_too) {
                continue;
            }
            for address in &endpoint.addresses {
                hosts.push_str(&format!(
                    "{address} {name}.{namespace}.svc {name}.{namespace}.svc.cluster.local\n"
                ));
            }
        }
    }
    Ok(hosts)
}

/// An environment variable's value as the kubelet resolves it.
/// An environment variable's value; `None` for an optional key that does
/// not exist, which leaves the variable unset.
async fn env_value(
    state: &State,
    pod: &Pod,
    ip: IpAddr,
    env: &EnvVar,
) -> anyhow::Result<Option<String>> {
    let Some(from) = &env.value_from else {
        // An empty value is stored as none.
        return Ok(Some(env.value.clone().unwrap_or_default()));
    };
    let from = Some(from);
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    if let Some(key) = from.and_then(|f| f.secret_key_ref.as_ref()) {
        let secrets: Api<Secret> = Api::namespaced(state.client.clone(), namespace);
        let value = secrets
            .get_opt(&key.name)
            .await?
            .and_then(|s| s.data?.remove(&key.key))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned());
        return optional_key(&env.name, value, key.optional);
    }
    if let Some(key) = from.and_then(|f| f.config_map_key_ref.as_ref()) {
        let maps: Api<ConfigMap> = Api::namespaced(state.client.clone(), namespace);
        let value = maps
            .get_opt(&key.name)
            .await?
            .and_then(|m| m.data?.remove(&key.key));
        return optional_key(&env.name, value, key.optional);
    }
    let field = from.and_then(|f| f.field_ref.as_ref()).with_context(|| {
        format!(
            "env {}: only values, secretKeyRefs, configMapKeyRefs and fieldRefs are supported",
            env.name
        )
    })?;
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let value = match field.field_path.as_str() {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" => Some(ip.to_string()),
        "status.hostIP" => Some(state.node_ip().to_string()),
        other => bail!("env {}: fieldRef {other} is not supported", env.name),
    };
    Ok(Some(value.unwrap_or_default()))
}

/// A key a variable refers to: a missing one is an error unless optional,
/// as a kubelet refuses to start the container.
fn optional_key(
    name: &str,
    value: Option<String>,
    optional: Option<bool>,
) -> anyhow::Result<Option<String>> {
    match value {
        Some(value) => Ok(Some(value)),
        None if optional == Some(true) => Ok(None),
        None => bail!("env {name}: the key it refers to does not exist"),
    }
}

/// Writes each volume the pod's containers mount; returns volume → directory.
async fn write_volumes(
    state: &State,
    pod: &Pod,
    pod_dir: &Path,
) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let (namespace, name, uid) = ident(pod);
    let spec = pod.spec.as_ref().context("pod without spec")?;
    let account = spec.service_account_name.as_deref().unwrap_or("default");
    let mut written = BTreeMap::new();
    for volume in spec.volumes.iter().flatten() {
        let dir = pod_dir.join("volumes").join(&volume.name);
        std::fs::create_dir_all(&dir)?;
        // A kubelet holds the pod until the Secrets and ConfigMaps it
        // mounts exist.
        let files = loop {
            if let Some(files) = volume_files(state, &namespace, volume).await? {
                break files;
            }
            let pods: Api<Pod> = Api::namespaced(state.client.clone(), &namespace);
            let live = pods.get_opt(&name).await?;
            if live.is_none_or(|p| p.metadata.deletion_timestamp.is_some()) {
                bail!(
                    "deleted while its volume {} waited for its source",
                    volume.name
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        for (file, content) in files {
            std::fs::write(dir.join(file), content)?;
        }
        for projection in volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
        {
            if let Some(token) = &projection.service_account_token {
                let seconds = token.expiration_seconds.unwrap_or(3600);
                let audiences: Vec<&str> = token.audience.as_deref().into_iter().collect();
                let bound = Some((name.as_str(), uid.as_str()));
                let text = request_token(
                    &state.client,
                    &namespace,
                    account,
                    &audiences,
                    bound,
                    seconds,
                )
                .await?;
                std::fs::write(dir.join(&token.path), text)?;
            }
        }
        written.insert(volume.name.clone(), dir);
    }
    Ok(written)
}

/// The files of a ConfigMap or Secret volume; `None` while a source it
/// requires does not exist (an optional one missing gives no files).
async fn volume_files(
    state: &State,
    namespace: &str,
    volume: &Volume,
) -> anyhow::Result<Option<Vec<(String, Vec<u8>)>>> {
    let (data, optional) = if let Some(source) = &volume.config_map {
        let maps: Api<ConfigMap> = Api::namespaced(state.client.clone(), namespace);
        let data = maps.get_opt(&source.name).await?.map(|map| {
            map.data
                .into_iter()
                .flatten()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect()
        });
        (data, source.optional)
    } else if let Some(source) = &volume.secret {
        let name = source
            .secret_name
            .as_deref()
            .context("secret volume without name")?;
        let secrets: Api<Secret> = Api::namespaced(state.client.clone(), namespace);
        let data = secrets.get_opt(name).await?.map(|secret| {
            secret
                .data
                .into_iter()
                .flatten()
                .map(|(k, v)| (k, v.0))
                .collect()
        });
        (data, source.optional)
    } else {
        return Ok(Some(Vec::new()));
    };
    Ok(match data {
        Some(files) => Some(files),
        None if optional == Some(true) => Some(Vec::new()),
        None => None,
    })
}

/// Rewrites the files of the pod's ConfigMap and Secret volumes that
/// changed, as a kubelet's volume sync does (rotated certificates, edited
/// configuration).
async fn refresh_volumes(state: &State, pod: &Pod, pod_dir: &Path) -> anyhow::Result<()> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = pod_dir.join("volumes").join(&volume.name);
        let files = volume_files(state, namespace, volume).await?;
        for (file, content) in files.into_iter().flatten() {
            let path = dir.join(file);
            if std::fs::read(&path).ok().as_deref() != Some(content.as_slice()) {
                std::fs::write(path, content)?;
            }
        }
    }
    Ok(())
}

/// Where a kubelet mounts a pod's service-account token, CA and namespace,
/// which in-cluster clients (client-go's, kube's) read.
const IN_CLUSTER: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn write_in_cluster_files(
    state: &State,
    dir: &Path,
    namespace: &str,
    token: &str,
) -> anyhow::Result<()> {
    use base64::Engine as _;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("token"), token)?;
    std::fs::write(dir.join("namespace"), namespace)?;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(&state.ca)
        .context("the cluster CA in the kubeconfig is not base64")?;
    std::fs::write(dir.join("ca.crt"), ca)?;
    Ok(())
}

fn write_kubeconfig(state: &State, path: &Path, account: &str, token: &str) -> anyhow::Result<()> {
    let config = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: wva-test\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: {account}\n  user:\n    token: {token}\n\
         contexts:\n- name: wva-test\n  context: {{cluster: wva-test, user: {account}}}\n\
         current-context: wva-test\n",
        server = state.server,
        ca = state.ca,
    );
    std::fs::write(path, config)?;
    Ok(())
}

/// Patches the pod's status: Running at `ip`, Ready or not.
async fn report(
    state: &State,
    namespace: &str,
    name: &str,
    ip: IpAddr,
    ready: bool,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(state.client.clone(), namespace);
    let now = rfc3339(false);
    let ready = if ready { "True" } else { "False" };
    let condition = |type_: &str, status: &str| json!({"type": type_, "status": status, "lastTransitionTime": now});
    let status = json!({"status": {
        "phase": "Running",
        "hostIP": state.node_ip().to_string(),
        "hostIPs": [{"ip": state.node_ip().to_string()}],
        "podIP": ip.to_string(),
        "podIPs": [{"ip": ip.to_string()}],
        "startTime": now,
        "conditions": [
            condition("PodScheduled", "True"),
            condition("Initialized", "True"),
            condition("ContainersReady", ready),
            condition("Ready", ready),
        ],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Strategic(&status))
        .await
        .context("report status")?;
    Ok(())
}

/// Polls the pod's readiness probes (HTTP GET) until all answer 2xx, then
/// reports it Ready. Ends when the pod stops running here.
async fn await_ready(state: Arc<State>, pod: Pod, ip: IpAddr) {
    let (namespace, name, uid) = ident(&pod);
    let probes: Vec<(u16, String, bool)> = pod
        .spec
        .iter()
        .flat_map(containers)
        .filter_map(|c| {
            let get = c.readiness_probe.as_ref()?.http_get.as_ref()?;
            let port = match &get.port {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => *p,
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(named) => {
                    c.ports
                        .iter()
                        .flatten()
                        .find(|p| p.name.as_deref() == Some(named))?
                        .container_port
                }
            };
            Some((
                u16::try_from(port).ok()?,
                get.path.clone().unwrap_or("/".into()),
                get.scheme.as_deref() == Some("HTTPS"),
            ))
        })
        .collect();
    loop {
        if !state
            .pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&uid)
        {
            return;
        }
        let mut ready = true;
        for (port, path, https) in &probes {
            let addr = (ip, *port).into();
            let answer = if *https {
                crate::https::get_unverified(addr, path).await
            } else {
                crate::http_get(addr, path).await
            };
            ready &= matches!(answer, Ok((status, _)) if (200..300).contains(&status));
        }
        if ready {
            if let Err(e) = report(&state, &namespace, &name, ip, true).await {
                eprintln!("local node {}: pod {namespace}/{name}: {e:#}", state.name);
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops the pod's processes: SIGTERM to all, then SIGKILL to those still
/// running after [`GRACE`].
async fn stop(state: Arc<State>, pod: Pod) {
    let (_, _, uid) = ident(&pod);
    let running = state
        .pods
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&uid);
    let children: Vec<Child> = running
        .into_iter()
        .flat_map(|p| p.children)
        .map(|c| c.child)
        .collect();
    for pid in children.iter().filter_map(Child::id) {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    let waits = children.into_iter().map(|mut child| async move {
        if tokio::time::timeout(GRACE, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    });
    futures::future::join_all(waits).await;
}

#[cfg(test)]
mod tests {
    use super::replace_host;

    #[test]
    fn only_a_host_standing_alone_is_the_pods_address() {
        let pod = "198.18.1.2";
        let cases = [
            (
                "http://127.0.0.1:8000/metrics",
                "127.0.0.1",
                "http://198.18.1.2:8000/metrics",
            ),
            ("0.0.0.0:9400", "0.0.0.0", "198.18.1.2:9400"),
            ("10.0.0.0/8", "0.0.0.0", "10.0.0.0/8"),
            (
                "http://localhost:8000,http://localhost:9000",
                "localhost",
                "http://198.18.1.2:8000,http://198.18.1.2:9000",
            ),
            ("notlocalhost:1", "localhost", "notlocalhost:1"),
        ];
        for (value, host, want) in cases {
            assert_eq!(replace_host(value, host, pod), want, "{value}");
        }
    }
}
