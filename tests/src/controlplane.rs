//! A real Kubernetes control plane for end-to-end tests: etcd,
//! kube-apiserver and kube-controller-manager, built from Kubernetes' own Go
//! modules and started by `scripts/cluster` on loopback, one per test, and
//! stopped when dropped (or, should the test process die, by the script's
//! watchdog).
//!
//! Tests act on it like kubectl (through [`ControlPlane::client`], with
//! cluster-admin certificates), get service-account tokens as the kubelet
//! does ([`request_token`]), and read what every client did and was refused
//! from the API server's audit log ([`ControlPlane::audit`]).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::authentication::v1::{
    BoundObjectReference, TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
    TokenReviewStatus,
};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::Deserialize;
use serde_json::Value;
use tokio::process::Command;

use crate::{eventually, workspace};

/// One running control plane and the directory holding its certificates,
/// kubeconfig, logs and data.
pub struct ControlPlane {
    dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Builds the components if needed (cached; see `scripts/cluster`) and
    /// starts them; fails with the script's own message when they cannot be
    /// built or do not become ready.
    pub async fn start() -> anyhow::Result<ControlPlane> {
        let dir = tempfile::Builder::new()
            .prefix("wva-cluster-")
            .tempdir()
            .context("create the cluster directory")?;
        let owner = std::process::id().to_string();
        let up = [
            OsStr::new("up"),
            dir.path().as_os_str(),
            OsStr::new("--owner"),
            OsStr::new(&owner),
        ];
        cluster_script(&up).await?;
        Ok(ControlPlane { dir })
    }

    /// Stops one component (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`) and starts it again; a restarted
    /// kube-apiserver is awaited until ready, the others are not.
    pub async fn restart(&self, component: &str) -> anyhow::Result<()> {
        let restart = [
            OsStr::new("restart"),
            self.dir().as_os_str(),
            OsStr::new(component),
        ];
        cluster_script(&restart).await.map(drop)
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to one component's processes.
    pub async fn signal(&self, component: &str, signal: &str) -> anyhow::Result<()> {
        let pids = std::fs::read_to_string(self.dir().join("pids"))?;
        let pid = pids
            .lines()
            .find_map(|line| {
                let (pid, name) = line.split_once(' ')?;
                (name == component).then_some(pid)
            })
            .with_context(|| format!("no {component} runs in {}", self.dir().display()))?;
        let status = Command::new("kill")
            .args(["-s", signal, "--", &format!("-{pid}")])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -s {signal} {component}: {status}");
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster-admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir().join("kubeconfig")
    }

    /// The API server's URL.
    pub fn server(&self) -> anyhow::Result<String> {
        let server = std::fs::read_to_string(self.dir().join("server"))?;
        Ok(server.trim().to_string())
    }

    /// A cluster-admin client (a client belongs to the runtime that made it:
    /// make one per test).
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client_from(&self.kubeconfig()).await
    }

    /// Awaits the ServiceAccount `default` of `namespace`, which the
    /// controller-manager creates shortly after the namespace; the API server
    /// refuses pods until it exists.
    pub async fn default_service_account(&self, namespace: &str) -> anyhow::Result<()> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client().await?, namespace);
        eventually(
            Duration::from_secs(30),
            "the default ServiceAccount",
            || {
                let accounts = accounts.clone();
                async move { Ok(accounts.get_opt("default").await?.map(|_| ())) }
            },
        )
        .await
    }

    /// A token for ServiceAccount `namespace/name`: see [`request_token`].
    pub async fn token(
        &self,
        namespace: &str,
        name: &str,
        audiences: &[&str],
        pod: Option<(&str, &str)>,
    ) -> anyhow::Result<String> {
        let client = self.client().await?;
        request_token(&client, namespace, name, audiences, pod, 3600).await
    }

    /// The API server's TokenReview of `token` for `audience`.
    pub async fn review_token(
        &self,
        token: &str,
        audience: &str,
    ) -> anyhow::Result<TokenReviewStatus> {
        let reviews: Api<TokenReview> = Api::all(self.client().await?);
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.into()),
                audiences: Some(vec![audience.into()]),
            },
            ..TokenReview::default()
        };
        let answer = reviews.create(&PostParams::default(), &review).await?;
        answer.status.context("TokenReview without status")
    }

    /// Every request the API server has answered so far, oldest first.
    pub fn audit(&self) -> anyhow::Result<Vec<AuditEvent>> {
        let path = self.dir().join("logs/audit.log");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|line| serde_json::from_str(line).with_context(|| format!("audit line {line}")))
            .collect()
    }

    /// Awaits APIService `name` Available (its server reachable through
    /// the aggregation layer); on failure says why, with its status.
    pub async fn api_service_available(&self, name: &str, within: Duration) -> anyhow::Result<()> {
        let services = Api::<DynamicObject>::all_with(
            self.client().await?,
            &ApiResource {
                group: "apiregistration.k8s.io".into(),
                version: "v1".into(),
                api_version: "apiregistration.k8s.io/v1".into(),
                kind: "APIService".into(),
                plural: "apiservices".into(),
            },
        );
        let what = format!("APIService {name} to be Available");
        let status = std::sync::Mutex::new(Value::Null);
        let available = eventually(within, &what, || async {
            let service = services.get(name).await?;
            let available = service.data["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Available" && c["status"] == "True");
            *status.lock().unwrap_or_else(|p| p.into_inner()) = service.data["status"].clone();
            Ok(available.then_some(()))
        })
        .await;
        available.with_context(|| {
            format!(
                "its status: {}",
                status.lock().unwrap_or_else(|p| p.into_inner())
            )
        })
    }

    /// Creates `object` (kind and apiVersion included); returns it as
    /// stored, or the API server's refusal.
    pub async fn create(&self, object: &Value) -> anyhow::Result<Value> {
        let api = dynamic_api(&self.client().await?, object)?;
        let created = api
            .create(
                &PostParams::default(),
                &serde_json::from_value(object.clone())?,
            )
            .await
            .with_context(|| format!("create {} {}", object["kind"], object["metadata"]["name"]))?;
        Ok(serde_json::to_value(created)?)
    }

    /// Server-side applies `object` (kind and apiVersion included) as
    /// field manager `e2e-test`, creating it if missing.
    pub async fn apply(&self, object: &Value) -> anyhow::Result<Value> {
        let api = dynamic_api(&self.client().await?, object)?;
        let name = object["metadata"]["name"]
            .as_str()
            .context("object without name")?;
        let applied = api
            .patch(name, &PatchParams::apply("e2e-test"), &Patch::Apply(object))
            .await
            .with_context(|| format!("apply {} {name}", object["kind"]))?;
        Ok(serde_json::to_value(applied)?)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let status = std::process::Command::new(workspace().join("scripts/cluster"))
            .arg("down")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "scripts/cluster down {} failed: {status:?}",
                self.dir().display()
            );
        }
    }
}

/// The executable of a third-party component tests deploy on the cluster
/// (`prometheus-adapter`), built from its own Go module the first time.
pub async fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let stdout = cluster_script(&[OsStr::new("tool"), OsStr::new(name)]).await?;
    let path = String::from_utf8(stdout).context("scripts/cluster tool printed no path")?;
    Ok(PathBuf::from(path.trim()))
}

/// The directory of a third-party component's Go module (its manifests
/// are there), downloaded the first time.
pub async fn tool_source(name: &str) -> anyhow::Result<PathBuf> {
    let stdout = cluster_script(&[OsStr::new("tool-source"), OsStr::new(name)]).await?;
    let path = String::from_utf8(stdout).context("scripts/cluster tool-source printed no path")?;
    Ok(PathBuf::from(path.trim()))
}

/// Runs `scripts/cluster ARGS…` and returns what it printed; fails with its
/// own message.
async fn cluster_script(args: &[&OsStr]) -> anyhow::Result<Vec<u8>> {
    let output = Command::new(workspace().join("scripts/cluster"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("run scripts/cluster")?;
    if !output.status.success() {
        bail!(
            "scripts/cluster {} failed ({}):\n{}",
            args.join(OsStr::new(" ")).to_string_lossy(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

/// A token for ServiceAccount `namespace/account` from the TokenRequest API,
/// for `audiences` (the API server's own when empty), valid for `seconds`,
/// optionally bound to a pod `(name, uid)` as the kubelet's projected tokens
/// are.
pub async fn request_token(
    client: &kube::Client,
    namespace: &str,
    account: &str,
    audiences: &[&str],
    pod: Option<(&str, &str)>,
    seconds: i64,
) -> anyhow::Result<String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            expiration_seconds: Some(seconds),
            bound_object_ref: pod.map(|(pod, uid)| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                uid: Some(uid.into()),
            }),
        },
        ..TokenRequest::default()
    };
    let answer = accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .with_context(|| format!("TokenRequest for {namespace}/{account}"))?;
    Ok(answer.status.context("TokenRequest without status")?.token)
}

/// A client for the kubeconfig at `path`.
pub async fn client_from(path: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// The API of `object`'s kind, in its namespace if it has one. Plurals are
/// the lowercased kind plus `s`, which holds for every kind the tests apply.
fn dynamic_api(client: &kube::Client, object: &Value) -> anyhow::Result<Api<DynamicObject>> {
    let api_version = object["apiVersion"]
        .as_str()
        .context("object without apiVersion")?;
    let kind = object["kind"].as_str().context("object without kind")?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let resource = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural: format!("{}s", kind.to_lowercase()),
    };
    Ok(match object["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    })
}

/// One audited request, reduced to what tests assert.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    pub verb: String,
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    pub user: AuditUser,
    #[serde(default)]
    pub object_ref: Option<AuditObject>,
    #[serde(default)]
    pub response_status: Option<AuditStatus>,
    pub stage: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuditUser {
    pub username: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditObject {
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub subresource: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuditStatus {
    #[serde(default)]
    pub code: u16,
}

impl AuditEvent {
    /// The response code (0 while a long request such as a watch runs).
    pub fn code(&self) -> u16 {
        self.response_status.as_ref().map_or(0, |s| s.code)
    }

    /// `verb uri → code`, for messages.
    pub fn describe(&self) -> String {
        format!("{} {} → {}", self.verb, self.request_uri, self.code())
    }
}

/// The username of ServiceAccount `namespace/name`.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// The requests of `user` the API server refused as forbidden.
pub fn forbidden<'a>(audit: &'a [AuditEvent], user: &str) -> Vec<&'a AuditEvent> {
    audit
        .iter()
        .filter(|e| e.user.username == user && e.code() == 403)
        .collect()
}
