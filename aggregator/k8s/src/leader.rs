//! Leader election on a `coordination.k8s.io/v1` Lease, with the semantics
//! of client-go's leaderelection: every write is a replace guarded by the
//! Lease's resourceVersion, so two replicas can never both win a round; a
//! holder is presumed dead when its record has not changed for the lease
//! duration *as observed locally* (no reliance on synchronized clocks); a
//! leader that cannot renew within the renew deadline steps down before any
//! other replica may take over.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct ElectionConfig {
    pub namespace: String,
    /// The Lease's name (`LEADER_ELECTION_ID`).
    pub name: String,
    /// This replica, usually its pod name.
    pub identity: String,
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long steps down; shorter than
    /// `lease_duration`, so it is gone before anyone may take over.
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// What one round of the election does, given the Lease as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No Lease exists: create it holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Nobody holds it, or the holder stopped renewing: take it over.
    Acquire { transitions: i32 },
    /// Someone else holds it and is alive.
    Follow { holder: String },
}

/// Remembers when the Lease record last changed, as this replica saw it.
#[derive(Debug, Default)]
pub struct Observer {
    record: Option<LeaseSpec>,
    changed_at: Option<Instant>,
}

impl Observer {
    /// Decides the step for the Lease read at `now`.
    pub fn step(&mut self, lease: Option<&Lease>, me: &str, now: Instant) -> Step {
        let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
            self.record = None;
            return if lease.is_none() {
                Step::Create
            } else {
                Step::Acquire { transitions: 0 }
            };
        };
        if self.record.as_ref() != Some(spec) {
            self.record = Some(spec.clone());
            self.changed_at = Some(now);
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        if holder.is_empty() {
            return Step::Acquire { transitions };
        }
        if holder == me {
            return Step::Renew;
        }
        let duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        );
        let expired = self
            .changed_at
            .is_some_and(|at| now.duration_since(at) >= duration);
        if expired {
            Step::Acquire {
                transitions: transitions + 1,
            }
        } else {
            Step::Follow {
                holder: holder.to_string(),
            }
        }
    }
}

/// Runs the election until shutdown, publishing whether this replica leads.
/// On shutdown a leader releases the Lease so another takes over at once.
pub async fn run(
    client: Client,
    config: ElectionConfig,
    leading: watch::Sender<bool>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut observer = Observer::default();
    let mut last_renewed: Option<Instant> = None;
    // tokio's clock (the same as std's, but one tests can pause).
    let now = || tokio::time::Instant::now().into_std();
    loop {
        let started = now();
        // A round may not outlast the renew deadline: a leader whose API
        // server stops answering steps down by then, not whenever (if ever)
        // the call returns, so it is gone before anyone may take over.
        let budget = match last_renewed {
            Some(at) => (at + config.renew_deadline).saturating_duration_since(started),
            None => config.renew_deadline,
        };
        let outcome = tokio::time::timeout(budget, round(&api, &config, &mut observer, now));
        match outcome.await {
            Ok(Ok(true)) => last_renewed = Some(started),
            Ok(Ok(false)) => last_renewed = None,
            Ok(Err(e)) => warn!(error = %e, lease = %config.name, "leader election round failed"),
            Err(_) => {
                warn!(lease = %config.name, ?budget, "leader election round did not finish within the renew deadline")
            }
        }
        let leads = last_renewed.is_some_and(|at| now().duration_since(at) < config.renew_deadline);
        if !leads {
            last_renewed = None;
        }
        leading.send_if_modified(|was| {
            let changed = *was != leads;
            if changed {
                info!(identity = %config.identity, lease = %config.name, leads, "leadership changed");
                *was = leads;
            }
            changed
        });
        tokio::select! {
            _ = tokio::time::sleep(config.retry_period) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    if *leading.borrow() {
        leading.send_replace(false);
        if let Err(e) = release(&api, &config).await {
            warn!(error = %e, "cannot release the leader Lease; it expires by itself");
        }
    }
    Ok(())
}

/// One read-decide-write round; `Ok(true)` when this replica holds the Lease
/// after it. `now` dates the Lease as read: it is asked once the read has
/// returned, so a slow read never makes the holder look silent for longer
/// than it was.
async fn round(
    api: &Api<Lease>,
    config: &ElectionConfig,
    observer: &mut Observer,
    now: impl FnOnce() -> Instant,
) -> Result<bool, kube::Error> {
    let lease = api.get_opt(&config.name).await?;
    let step = observer.step(lease.as_ref(), &config.identity, now());
    let result = match (&step, lease) {
        (Step::Create, _) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    namespace: Some(config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(held(config, 0)),
            };
            api.create(&PostParams::default(), &lease).await
        }
        (Step::Follow { .. }, _) | (_, None) => return Ok(false),
        (Step::Renew, Some(mut lease)) => {
            let spec = lease.spec.get_or_insert_default();
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            spec.lease_duration_seconds = Some(seconds(config.lease_duration));
            api.replace(&config.name, &PostParams::default(), &lease)
                .await
        }
        (Step::Acquire { transitions }, Some(mut lease)) => {
            lease.spec = Some(held(config, *transitions));
            api.replace(&config.name, &PostParams::default(), &lease)
                .await
        }
    };
    match result {
        Ok(_) => Ok(true),
        // Someone else wrote first this round: not ours (yet).
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// A spec naming this replica the holder from now.
fn held(config: &ElectionConfig, transitions: i32) -> LeaseSpec {
    let now = MicroTime(Timestamp::now());
    LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(seconds(config.lease_duration)),
        acquire_time: Some(now.clone()),
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// Gives the Lease up: no holder and a one-second duration, as client-go does.
async fn release(api: &Api<Lease>, config: &ElectionConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_default();
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    api.replace(&config.name, &PostParams::default(), &lease)
        .await?;
    info!(lease = %config.name, "leader Lease released");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, duration: i32, renew: i64, transitions: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(duration),
                renew_time: Some(MicroTime(Timestamp::from_second(renew).unwrap())),
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn no_lease_is_created() {
        let mut o = Observer::default();
        assert_eq!(o.step(None, "a", Instant::now()), Step::Create);
    }

    #[test]
    fn our_lease_is_renewed() {
        let mut o = Observer::default();
        let l = lease(Some("a"), 15, 1, 0);
        assert_eq!(o.step(Some(&l), "a", Instant::now()), Step::Renew);
    }

    #[test]
    fn a_released_lease_is_acquired_without_waiting() {
        let mut o = Observer::default();
        let l = lease(None, 1, 1, 3);
        assert_eq!(
            o.step(Some(&l), "b", Instant::now()),
            Step::Acquire { transitions: 3 }
        );
    }

    #[test]
    fn a_live_holder_is_followed_until_its_record_stops_changing() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        let first = lease(Some("a"), 15, 100, 0);
        assert_eq!(
            o.step(Some(&first), "b", t0),
            Step::Follow { holder: "a".into() }
        );
        // The holder renews at +10 s: the clock restarts from that observation.
        let renewed = lease(Some("a"), 15, 110, 0);
        let t10 = t0 + Duration::from_secs(10);
        assert!(matches!(
            o.step(Some(&renewed), "b", t10),
            Step::Follow { .. }
        ));
        // +20 s: only 10 s since the last change, still alive.
        let t20 = t0 + Duration::from_secs(20);
        assert!(matches!(
            o.step(Some(&renewed), "b", t20),
            Step::Follow { .. }
        ));
        // +25 s: 15 s without change, the holder is presumed dead.
        let t25 = t0 + Duration::from_secs(25);
        assert_eq!(
            o.step(Some(&renewed), "b", t25),
            Step::Acquire { transitions: 1 }
        );
    }

    #[test]
    fn expiry_ignores_the_holders_clock() {
        // A renewTime far in the past (skewed clock) does not make a freshly
        // observed holder look expired.
        let mut o = Observer::default();
        let skewed = lease(Some("a"), 15, 0, 0);
        assert!(matches!(
            o.step(Some(&skewed), "b", Instant::now()),
            Step::Follow { .. }
        ));
    }
}

/// The election's requests, scripted with `tower-test` as kube-rs does.
#[cfg(test)]
mod api_tests {
    use http::{Method, StatusCode};
    use serde_json::{Value, json};

    use super::*;
    use crate::scripted::{self, failure, json_body, respond};

    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/wva-system/leases/wva-leader";

    fn config() -> ElectionConfig {
        ElectionConfig {
            namespace: "wva-system".into(),
            name: "wva-leader".into(),
            identity: "wva-0".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    fn api() -> (Api<Lease>, scripted::Handle) {
        let (client, handle) = scripted::client();
        (Api::namespaced(client, "wva-system"), handle)
    }

    /// One round of a fresh replica; whether it leads after it.
    async fn first_round(api: &Api<Lease>) -> bool {
        let mut observer = Observer::default();
        round(api, &config(), &mut observer, Instant::now)
            .await
            .unwrap()
    }

    fn lease_json(holder: &str, resource_version: &str) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "wva-leader", "namespace": "wva-system",
                         "resourceVersion": resource_version},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                     "renewTime": "2026-11-23T10:00:00.000000Z", "leaseTransitions": 2}
        })
    }

    #[tokio::test]
    async fn a_missing_lease_is_created_holding_it() {
        let (api, mut handle) = api();
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(
                (request.method(), request.uri().path()),
                (&Method::GET, PATH)
            );
            respond(
                send,
                StatusCode::NOT_FOUND,
                &failure(404, "NotFound", "NotFound"),
            );
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), Method::POST);
            assert_eq!(
                request.uri().path(),
                "/apis/coordination.k8s.io/v1/namespaces/wva-system/leases"
            );
            let created = json_body(request).await;
            assert_eq!(created["spec"]["holderIdentity"], "wva-0");
            assert_eq!(created["spec"]["leaseDurationSeconds"], 15);
            respond(send, StatusCode::CREATED, &created);
        });
        assert!(first_round(&api).await);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_renewal_replaces_with_the_read_resource_version() {
        let (api, mut handle) = api();
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.unwrap();
            respond(send, StatusCode::OK, &lease_json("wva-0", "41"));
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(
                (request.method(), request.uri().path()),
                (&Method::PUT, PATH)
            );
            let replaced = json_body(request).await;
            assert_eq!(replaced["metadata"]["resourceVersion"], "41");
            assert_eq!(replaced["spec"]["holderIdentity"], "wva-0");
            assert_ne!(replaced["spec"]["renewTime"], "2026-11-23T10:00:00.000000Z");
            respond(send, StatusCode::OK, &replaced);
        });
        assert!(first_round(&api).await);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn losing_the_race_for_an_expired_lease_is_not_leading() {
        let (api, mut handle) = api();
        let t0 = Instant::now();
        let mut observer = Observer::default();
        // First sight of a live holder: follow, write nothing.
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.unwrap();
            respond(send, StatusCode::OK, &lease_json("wva-1", "7"));
            handle
        });
        assert!(!round(&api, &config(), &mut observer, || t0).await.unwrap());
        let mut handle = server.await.unwrap();

        // The same record 15 s later: take over, incrementing the transitions;
        // another replica wrote first, so the replace conflicts.
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.unwrap();
            respond(send, StatusCode::OK, &lease_json("wva-1", "7"));
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), Method::PUT);
            let taken = json_body(request).await;
            assert_eq!(taken["metadata"]["resourceVersion"], "7");
            assert_eq!(taken["spec"]["holderIdentity"], "wva-0");
            assert_eq!(taken["spec"]["leaseTransitions"], 3);
            respond(
                send,
                StatusCode::CONFLICT,
                &failure(409, "Conflict", "Conflict"),
            );
        });
        let later = t0 + Duration::from_secs(15);
        assert!(
            !round(&api, &config(), &mut observer, || later)
                .await
                .unwrap()
        );
        server.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_api_server_stops_answering_steps_down_by_its_renew_deadline() {
        let (client, mut handle) = scripted::client();
        let (leading_tx, mut leading) = watch::channel(false);
        let shutdown = CancellationToken::new();
        let election = tokio::spawn(run(client, config(), leading_tx, shutdown));
        // The first round renews our Lease.
        let (_, send) = handle.next_request().await.unwrap();
        respond(send, StatusCode::OK, &lease_json("wva-0", "41"));
        let (request, send) = handle.next_request().await.unwrap();
        let renewed_at = tokio::time::Instant::now();
        let replaced = json_body(request).await;
        respond(send, StatusCode::OK, &replaced);
        leading.wait_for(|leads| *leads).await.unwrap();
        // From now on every request hangs, unanswered.
        let hung = tokio::spawn(async move {
            let mut unanswered = Vec::new();
            while let Some(pending) = handle.next_request().await {
                unanswered.push(pending);
            }
        });
        // Another replica may take over once the lease duration has passed.
        tokio::time::timeout(config().lease_duration, leading.wait_for(|leads| !*leads))
            .await
            .expect("still leading when another replica may take over")
            .unwrap();
        let stepped_down = renewed_at.elapsed();
        assert!(
            stepped_down <= config().renew_deadline,
            "still leading {stepped_down:?} after the last renewal"
        );
        election.abort();
        hung.abort();
    }
}
