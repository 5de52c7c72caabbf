//! Pod identity in a cluster: no pod may speak for another.
//!
//! An agent presents its pod's projected service-account token (audience
//! [`DEFAULT_AUDIENCE`] unless configured). The API server verifies it with a
//! TokenReview, which also says which pod the token is bound to; the stream
//! is accepted only when that pod (namespace, name, UID) is the one the
//! Hello claims. The variant is then taken from the cluster, never from the
//! agent: the pod's owning ReplicaSet's owning Deployment. Verdicts are
//! cached until the token expires, so reconnects do not each cost a review.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::PostParams;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use tokio::sync::Semaphore;
use tracing::debug;
use wva_core::admission::{Admission, Refusal, RefusalCode};
use wva_proto::v1::{Hello, Role};

/// The audience agents' tokens are minted for.
pub const DEFAULT_AUDIENCE: &str = "wva-aggregator";
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";
/// Longest a verdict is trusted, whatever the token's own expiry.
const MAX_CACHE: Duration = Duration::from_secs(10 * 60);
/// A refused token is not reviewed again for this long.
const NEGATIVE_CACHE: Duration = Duration::from_secs(10);
/// Verdicts kept at most: with [`MAX_TOKEN_BYTES`], the cache stays under
/// 40 MiB whatever strings clients send.
const MAX_ENTRIES: usize = 4_096;
/// Longest bearer token reviewed; a service-account token is about 1 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// TokenReviews in flight at once; more streams are refused as
/// UNAVAILABLE (agents retry), so a flood of made-up tokens cannot queue
/// unbounded work on the API server.
const MAX_REVIEWS: usize = 16;

/// The pod a verified token is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// Whether `token` has the shape of a JWT worth a TokenReview: three
/// base64url segments, at most [`MAX_TOKEN_BYTES`]. Anything else is refused
/// without asking the API server.
pub fn check_shape(token: &str) -> Result<(), Refusal> {
    let base64url = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
    };
    let segments: Vec<&str> = token.split('.').collect();
    if token.len() <= MAX_TOKEN_BYTES
        && segments.len() == 3
        && segments.iter().all(|s| base64url(s))
    {
        return Ok(());
    }
    Err(Refusal::new(
        RefusalCode::Unauthenticated,
        "malformed_token",
        format!(
            "the bearer token is not a service-account token (a JWT of at most {MAX_TOKEN_BYTES} bytes)"
        ),
    ))
}

/// The pod a TokenReview's answer names, or why the token is not acceptable.
/// The answer must say the token is valid for `audience`: an authenticator
/// that ignored the requested audiences would otherwise vouch for a token
/// minted for another service.
pub fn bound_pod(status: &TokenReviewStatus, audience: &str) -> Result<BoundPod, Refusal> {
    if status.authenticated != Some(true) {
        let why = status.error.as_deref().unwrap_or("not authenticated");
        return Err(Refusal::new(
            RefusalCode::Unauthenticated,
            "token_invalid",
            format!("token rejected by the API server: {why}"),
        ));
    }
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(Refusal::new(
            RefusalCode::Unauthenticated,
            "token_invalid",
            format!(
                "the API server did not confirm the token for audience {audience:?} (it confirmed {audiences:?})"
            ),
        ));
    }
    let user = status.user.as_ref();
    let extra = |key: &str| {
        user.and_then(|u| u.extra.as_ref())
            .and_then(|e| e.get(key))
            .and_then(|v| v.first())
            .cloned()
    };
    let namespace = user
        .and_then(|u| u.username.as_deref())
        .and_then(|n| n.strip_prefix("system:serviceaccount:"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(ns, _)| ns.to_string());
    match (namespace, extra(POD_NAME_EXTRA), extra(POD_UID_EXTRA)) {
        (Some(namespace), Some(name), Some(uid)) => Ok(BoundPod {
            namespace,
            name,
            uid,
        }),
        _ => Err(Refusal::new(
            RefusalCode::Unauthenticated,
            "not_pod_bound",
            "the token is not a pod-bound service-account token; mount a projected service-account token",
        )),
    }
}

/// Whether the Hello claims the pod the token is bound to.
pub fn check_claim(bound: &BoundPod, hello: &Hello) -> Result<(), Refusal> {
    let uid_matches = hello.pod_uid.is_empty() || hello.pod_uid == bound.uid;
    if hello.namespace == bound.namespace && hello.pod == bound.name && uid_matches {
        return Ok(());
    }
    Err(Refusal::new(
        RefusalCode::PermissionDenied,
        "pod_mismatch",
        format!(
            "the token belongs to pod {}/{} (uid {}), but the stream claims pod {}/{}{}",
            bound.namespace,
            bound.name,
            bound.uid,
            hello.namespace,
            hello.pod,
            if hello.pod_uid.is_empty() {
                String::new()
            } else {
                format!(" (uid {})", hello.pod_uid)
            }
        ),
    ))
}

fn controller_of<'a>(owners: Option<&'a Vec<OwnerReference>>, kind: &str) -> Option<&'a str> {
    owners?
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == kind)
        .map(|o| o.name.as_str())
}

/// The Deployment that owns the pod through its ReplicaSet, as the cluster
/// says; `pod` and `replica_set` look objects up by namespace and name.
pub fn owner_deployment(
    bound: &BoundPod,
    pod: impl Fn(&str, &str) -> Option<Pod>,
    replica_set: impl Fn(&str, &str) -> Option<ReplicaSet>,
) -> Result<String, Refusal> {
    let at = format!("{}/{}", bound.namespace, bound.name);
    let Some(pod) = pod(&bound.namespace, &bound.name) else {
        return Err(Refusal::new(
            RefusalCode::NotFound,
            "pod_unknown",
            format!("pod {at} is not known to the aggregator yet; retry"),
        ));
    };
    if pod.metadata.uid.as_deref() != Some(bound.uid.as_str()) {
        return Err(Refusal::new(
            RefusalCode::PermissionDenied,
            "pod_mismatch",
            format!("pod {at} has another uid than the token's {}", bound.uid),
        ));
    }
    let not_owned = || {
        Refusal::new(
            RefusalCode::FailedPrecondition,
            "not_owned",
            format!("pod {at} is not owned by a Deployment through a ReplicaSet"),
        )
    };
    let rs_name = controller_of(pod.metadata.owner_references.as_ref(), "ReplicaSet")
        .ok_or_else(not_owned)?;
    let rs = replica_set(&bound.namespace, rs_name).ok_or_else(not_owned)?;
    controller_of(rs.metadata.owner_references.as_ref(), "Deployment")
        .map(str::to_string)
        .ok_or_else(not_owned)
}

/// The annotation that makes a pod's agent an endpoint picker's (`epp`) or
/// a generic workload's (`generic`); the injection webhook reads the same one.
pub const ROLE_ANNOTATION: &str = "wva.llmd.ai/agent-role";

/// Whether the agent's role is the one its pod declares: an endpoint
/// picker's queue can wake a model from zero, so a pod may report as one
/// only when the cluster says it is one.
pub fn check_role(pod: &Pod, hello: &Hello) -> Result<(), Refusal> {
    let declared = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROLE_ANNOTATION))
        .map(|r| r.trim());
    let declared = match declared {
        Some("epp") => Role::Epp,
        Some("generic") => Role::Generic,
        _ => Role::Vllm,
    };
    if hello.role == declared as i32 {
        return Ok(());
    }
    let name = |role: Option<Role>| match role {
        Some(Role::Epp) => "epp",
        Some(Role::Vllm) => "vllm",
        Some(Role::Generic) => "generic",
        _ => "an unknown role",
    };
    Err(Refusal::new(
        RefusalCode::PermissionDenied,
        "role_mismatch",
        format!(
            "pod {}/{} is a {} pod ({ROLE_ANNOTATION}), but its agent reports as {}",
            hello.namespace,
            hello.pod,
            name(Some(declared)),
            name(Role::try_from(hello.role).ok())
        ),
    ))
}

/// When a JWT expires, from its `exp` claim; `None` if it cannot be read
/// (the token is verified by the API server, not here).
pub fn token_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some(UNIX_EPOCH + Duration::from_secs(exp))
}

/// Token verdicts with their deadlines.
#[derive(Default)]
pub struct VerdictCache {
    entries: HashMap<String, (Result<BoundPod, Refusal>, Instant)>,
}

impl VerdictCache {
    pub fn get(&self, token: &str, now: Instant) -> Option<Result<BoundPod, Refusal>> {
        let (verdict, until) = self.entries.get(token)?;
        (now < *until).then(|| verdict.clone())
    }

    /// Keeps a verdict: a positive one until the token expires (at most
    /// [`MAX_CACHE`]), a negative one briefly.
    pub fn put(
        &mut self,
        token: &str,
        verdict: Result<BoundPod, Refusal>,
        now: Instant,
        wall: SystemTime,
    ) {
        let ttl = match &verdict {
            Ok(_) => token_expiry(token)
                .and_then(|exp| exp.duration_since(wall).ok())
                .map_or(MAX_CACHE, |left| left.min(MAX_CACHE)),
            Err(_) => NEGATIVE_CACHE,
        };
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.retain(|_, (_, until)| now < *until);
            if self.entries.len() >= MAX_ENTRIES {
                self.entries.clear();
            }
        }
        self.entries.insert(token.to_string(), (verdict, now + ttl));
    }
}

/// Admission by TokenReview and the watched Pods and ReplicaSets.
pub struct ClusterAdmission {
    client: Client,
    audience: String,
    pods: Store<Pod>,
    replica_sets: Store<ReplicaSet>,
    cache: Mutex<VerdictCache>,
    reviews: Semaphore,
}

impl ClusterAdmission {
    pub fn new(
        client: Client,
        audience: String,
        pods: Store<Pod>,
        replica_sets: Store<ReplicaSet>,
    ) -> Self {
        ClusterAdmission {
            client,
            audience,
            pods,
            replica_sets,
            cache: Mutex::default(),
            reviews: Semaphore::new(MAX_REVIEWS),
        }
    }

    async fn review(&self, token: &str) -> Result<BoundPod, Refusal> {
        let now = Instant::now();
        if let Some(verdict) = self.cache().get(token, now) {
            return verdict;
        }
        check_shape(token)?;
        let Ok(_review) = self.reviews.try_acquire() else {
            return Err(Refusal::new(
                RefusalCode::Unavailable,
                "reviews_busy",
                format!("{MAX_REVIEWS} token reviews are in flight; retry"),
            ));
        };
        let review = TokenReview {
            metadata: Default::default(),
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            status: None,
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                Refusal::new(
                    RefusalCode::Unavailable,
                    "review_failed",
                    format!("cannot verify the token with a TokenReview: {e}"),
                )
            })?;
        let verdict = bound_pod(&answer.status.unwrap_or_default(), &self.audience);
        self.cache()
            .put(token, verdict.clone(), now, SystemTime::now());
        verdict
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, VerdictCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl Admission for ClusterAdmission {
    async fn admit(&self, bearer: Option<&str>, hello: &Hello) -> Result<String, Refusal> {
        let Some(token) = bearer else {
            return Err(Refusal::new(
                RefusalCode::Unauthenticated,
                "no_token",
                format!(
                    "a projected service-account token for audience {:?} is required",
                    self.audience
                ),
            ));
        };
        let bound = self.review(token).await?;
        check_claim(&bound, hello)?;
        if let Some(pod) = self
            .pods
            .get(&ObjectRef::new(&bound.name).within(&bound.namespace))
        {
            check_role(&pod, hello)?;
        }
        let deployment = owner_deployment(
            &bound,
            |ns, name| {
                self.pods
                    .get(&ObjectRef::new(name).within(ns))
                    .map(|p| (*p).clone())
            },
            |ns, name| {
                self.replica_sets
                    .get(&ObjectRef::new(name).within(ns))
                    .map(|r| (*r).clone())
            },
        )?;
        debug!(pod = %format!("{}/{}", bound.namespace, bound.name), %deployment, "agent identity verified");
        Ok(deployment)
    }

    /// The token is bound to the pod it names (checked in `check_claim`).
    fn proves_pod(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::authentication::v1::UserInfo;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn reviewed(pod: &str, uid: &str) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            user: Some(UserInfo {
                username: Some("system:serviceaccount:llm:default".into()),
                extra: Some(BTreeMap::from([
                    (POD_NAME_EXTRA.to_string(), vec![pod.to_string()]),
                    (POD_UID_EXTRA.to_string(), vec![uid.to_string()]),
                ])),
                ..UserInfo::default()
            }),
            audiences: Some(vec![DEFAULT_AUDIENCE.into()]),
            error: None,
        }
    }

    fn bound() -> BoundPod {
        BoundPod {
            namespace: "llm".into(),
            name: "llama-7d9-x2".into(),
            uid: "u-1".into(),
        }
    }

    fn hello(pod: &str, uid: &str) -> Hello {
        Hello {
            pod: pod.into(),
            namespace: "llm".into(),
            pod_uid: uid.into(),
            variant: "whatever-the-agent-says".into(),
            ..Hello::default()
        }
    }

    fn owned(kind: &str, name: &str) -> Option<Vec<OwnerReference>> {
        Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: "o".into(),
            controller: Some(true),
            block_owner_deletion: None,
        }])
    }

    fn pod(uid: &str, owner: Option<Vec<OwnerReference>>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                owner_references: owner,
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    fn replica_set(owner: Option<Vec<OwnerReference>>) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                owner_references: owner,
                ..ObjectMeta::default()
            },
            ..ReplicaSet::default()
        }
    }

    #[test]
    fn a_review_names_the_bound_pod() {
        assert_eq!(
            bound_pod(&reviewed("llama-7d9-x2", "u-1"), DEFAULT_AUDIENCE).unwrap(),
            bound()
        );
    }

    #[test]
    fn an_unauthenticated_review_is_refused_with_its_error() {
        let status = TokenReviewStatus {
            authenticated: Some(false),
            error: Some("token audiences [\"x\"] is invalid for the target audiences".into()),
            ..TokenReviewStatus::default()
        };
        let refusal = bound_pod(&status, DEFAULT_AUDIENCE).unwrap_err();
        assert_eq!(refusal.code, RefusalCode::Unauthenticated);
        assert_eq!(refusal.reason, "token_invalid");
        assert!(refusal.message.contains("audiences"));
    }

    #[test]
    fn a_token_without_a_pod_binding_is_refused() {
        let mut status = reviewed("p", "u");
        status.user.as_mut().unwrap().extra = None;
        assert_eq!(
            bound_pod(&status, DEFAULT_AUDIENCE).unwrap_err().reason,
            "not_pod_bound"
        );
    }

    #[test]
    fn the_review_must_confirm_our_audience() {
        let mut status = reviewed("llama-7d9-x2", "u-1");
        status.audiences = Some(vec!["someone-else".into()]);
        let refusal = bound_pod(&status, DEFAULT_AUDIENCE).unwrap_err();
        assert_eq!(refusal.reason, "token_invalid");
        assert!(
            refusal.message.contains("someone-else"),
            "{}",
            refusal.message
        );
        status.audiences = None;
        assert!(bound_pod(&status, DEFAULT_AUDIENCE).is_err());
    }

    #[test]
    fn only_jwt_shaped_tokens_are_reviewed() {
        assert!(check_shape("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln").is_ok());
        let long = format!("a.{}.c", "b".repeat(MAX_TOKEN_BYTES));
        for bad in [
            "",
            "not-a-jwt",
            "a.b",
            "a..c",
            "a.b.c.d",
            "a.b c.d",
            long.as_str(),
        ] {
            assert_eq!(
                check_shape(bad).unwrap_err().reason,
                "malformed_token",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_pod_cannot_speak_for_another() {
        assert!(check_claim(&bound(), &hello("llama-7d9-x2", "u-1")).is_ok());
        assert!(check_claim(&bound(), &hello("llama-7d9-x2", "")).is_ok());
        let other = check_claim(&bound(), &hello("llama-7d9-zz", "u-1")).unwrap_err();
        assert_eq!(other.code, RefusalCode::PermissionDenied);
        assert_eq!(other.reason, "pod_mismatch");
        assert!(other.message.contains("llm/llama-7d9-zz"));
        let uid = check_claim(&bound(), &hello("llama-7d9-x2", "u-2")).unwrap_err();
        assert_eq!(uid.reason, "pod_mismatch");
        let mut elsewhere = hello("llama-7d9-x2", "u-1");
        elsewhere.namespace = "other".into();
        assert!(check_claim(&bound(), &elsewhere).is_err());
    }

    #[test]
    fn the_variant_is_the_owning_deployment() {
        let deployment = owner_deployment(
            &bound(),
            |ns, name| {
                (ns == "llm" && name == "llama-7d9-x2")
                    .then(|| pod("u-1", owned("ReplicaSet", "llama-7d9")))
            },
            |ns, name| {
                (ns == "llm" && name == "llama-7d9")
                    .then(|| replica_set(owned("Deployment", "llama")))
            },
        );
        assert_eq!(deployment.unwrap(), "llama");
    }

    #[test]
    fn unknown_replaced_or_unowned_pods_are_refused() {
        let none = owner_deployment(&bound(), |_, _| None, |_, _| None).unwrap_err();
        assert_eq!(
            (none.code, none.reason),
            (RefusalCode::NotFound, "pod_unknown")
        );

        let replaced = owner_deployment(
            &bound(),
            |_, _| Some(pod("u-9", owned("ReplicaSet", "rs"))),
            |_, _| Some(replica_set(owned("Deployment", "d"))),
        )
        .unwrap_err();
        assert_eq!(replaced.reason, "pod_mismatch");

        let bare = owner_deployment(&bound(), |_, _| Some(pod("u-1", None)), |_, _| None);
        assert_eq!(bare.unwrap_err().reason, "not_owned");

        let statefulset = owner_deployment(
            &bound(),
            |_, _| Some(pod("u-1", owned("StatefulSet", "s"))),
            |_, _| None,
        );
        assert_eq!(statefulset.unwrap_err().reason, "not_owned");

        let bare_rs = owner_deployment(
            &bound(),
            |_, _| Some(pod("u-1", owned("ReplicaSet", "rs"))),
            |_, _| Some(replica_set(None)),
        );
        assert_eq!(bare_rs.unwrap_err().reason, "not_owned");
    }

    fn jwt(exp: u64) -> String {
        let claims = format!(r#"{{"aud":["wva-aggregator"],"exp":{exp}}}"#);
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims);
        format!("eyJhbGciOiJSUzI1NiJ9.{payload}.c2lnbmF0dXJl")
    }

    #[test]
    fn expiry_is_read_from_the_token() {
        assert_eq!(
            token_expiry(&jwt(1_900_000_000)),
            Some(UNIX_EPOCH + Duration::from_secs(1_900_000_000))
        );
        assert_eq!(token_expiry("not-a-jwt"), None);
    }

    #[test]
    fn verdicts_are_cached_until_the_token_expires() {
        let wall = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let now = Instant::now();
        let token = jwt(1_000_060);
        let mut cache = VerdictCache::default();
        cache.put(&token, Ok(bound()), now, wall);
        let hit = cache.get(&token, now + Duration::from_secs(59));
        assert!(matches!(hit, Some(Ok(ref b)) if *b == bound()), "{hit:?}");
        assert!(cache.get(&token, now + Duration::from_secs(60)).is_none());
    }

    #[test]
    fn refusals_are_cached_briefly_and_long_tokens_at_most_ten_minutes() {
        let wall = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let now = Instant::now();
        let mut cache = VerdictCache::default();
        let refused = Refusal::new(RefusalCode::Unauthenticated, "token_invalid", "no");
        cache.put("bad", Err(refused), now, wall);
        assert!(
            cache
                .get("bad", now + NEGATIVE_CACHE - Duration::from_millis(1))
                .is_some()
        );
        assert!(cache.get("bad", now + NEGATIVE_CACHE).is_none());

        let year = jwt(1_000_000 + 365 * 86_400);
        cache.put(&year, Ok(bound()), now, wall);
        assert!(cache.get(&year, now + MAX_CACHE).is_none());
    }

    #[test]
    fn a_pod_reports_the_role_it_declares() {
        let annotated = |role: Option<&str>| Pod {
            metadata: ObjectMeta {
                annotations: role.map(|r| [(ROLE_ANNOTATION.to_string(), r.to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        };
        let claiming = |role: Role| Hello {
            role: role as i32,
            ..hello("llama-7d9-x2", "u-1")
        };
        assert!(check_role(&annotated(None), &claiming(Role::Vllm)).is_ok());
        assert!(check_role(&annotated(Some("epp")), &claiming(Role::Epp)).is_ok());
        let posing = check_role(&annotated(None), &claiming(Role::Epp)).unwrap_err();
        assert_eq!(posing.reason, "role_mismatch");
        assert_eq!(posing.code, RefusalCode::PermissionDenied);
        assert!(
            posing.message.contains("is a vllm pod"),
            "{}",
            posing.message
        );
        assert!(check_role(&annotated(Some("epp")), &claiming(Role::Vllm)).is_err());
        assert!(check_role(&annotated(Some("generic")), &claiming(Role::Generic)).is_ok());
        assert!(check_role(&annotated(None), &claiming(Role::Generic)).is_err());
    }
}
