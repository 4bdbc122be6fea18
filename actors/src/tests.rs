//! Unit tests of the actor system against the recording fakes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::access::AccessRules;
use crate::backend::{BackendError, SecretBackend};
use crate::cache::{Cache, CacheSettings};
use crate::engine::ContainerEngine;
use crate::fake::{EngineCall, FakeBackend, FakeEngine};
use crate::injector::{Injector, InjectorSettings};
use crate::messages::{ContainerJob, Fetch, GetReadiness, GetSecret, Trigger};
use crate::metrics::{render, Metrics};
use crate::model::{ContainerAction, ContainerInfo, EngineEvent};
use crate::provider::{BackendFactory, ProviderConnection};
use crate::secret::{SecretData, SecretValue};
use crate::supervisor::{AgentSettings, ProviderSpec, Supervisor};

fn map(pairs: &[(&str, &str)]) -> SecretData {
    SecretData::Map(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), SecretValue::from_str_copy(v)))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn container(id: &str, labels: &[(&str, &str)], tmpfs: &[&str]) -> ContainerInfo {
    ContainerInfo {
        id: id.into(),
        name: format!("name-{id}"),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        image: String::new(),
        user: String::new(),
        running: true,
        tmpfs_mounts: tmpfs.iter().map(|s| s.to_string()).collect(),
        upper_dir: None,
        started_at: Some("2026-11-29T00:00:00Z".into()),
        health: None,
        pid: Some(4242),
        literal_refs: Vec::new(),
    }
}

fn test_settings() -> AgentSettings {
    AgentSettings {
        shards: 4,
        queue_capacity: 100,
        shard_concurrency: 2,
        exec_concurrency: 8,
        cache_ttl: Duration::from_secs(60),
        cache_max_entries: 100,
        cache_max_stale: Duration::from_secs(3600),
        rules: Arc::new(vec![]),
        scope: None,
        access: Arc::new(AccessRules::default()),
        docker_max_reconnects: 3,
        reconcile_interval: None,
        drain_timeout: Duration::from_secs(1),
        digest_key: Arc::new(zeroize::Zeroizing::new(b"test".to_vec())),
        rotation_debounce: Duration::from_millis(50),
        audit: None,
        restart_splay: Duration::from_millis(200),
        max_concurrent_rotations: 16,
    }
}

/// The whole actor tree on the fakes, provider `p` refreshed every 300 ms.
fn start_agent(
    engine: &Arc<FakeEngine>,
    backend: &Arc<FakeBackend>,
) -> (Addr<Supervisor>, prometheus_client::registry::Registry) {
    let (metrics, registry) = Metrics::new("test");
    let sup = Supervisor::new(
        engine.clone() as Arc<dyn ContainerEngine>,
        None,
        vec![ProviderSpec {
            name: "p".into(),
            factory: factory(backend.clone()),
            timeout: Duration::from_secs(5),
            refresh_interval: Some(Duration::from_millis(300)),
            rate_limit: None,
        }],
        test_settings(),
        metrics,
    )
    .start();
    (sup, registry)
}

fn factory(b: Arc<FakeBackend>) -> BackendFactory {
    Arc::new(move || Ok(b.clone() as Arc<dyn SecretBackend>))
}

struct Rig {
    engine: Arc<FakeEngine>,
    backend: Arc<FakeBackend>,
    metrics: Arc<Metrics>,
    registry: prometheus_client::registry::Registry,
    cache: Addr<Cache>,
    /// The direct writer the injectors get (None: exec only, like `write_mode = "exec"`).
    direct: Option<Arc<dyn crate::direct::DirectWriter>>,
}

fn rig() -> Rig {
    rig_with_ttl(Duration::from_secs(60))
}

fn rig_with_ttl(ttl: Duration) -> Rig {
    let engine = FakeEngine::new();
    let backend = FakeBackend::new();
    let (metrics, registry) = Metrics::new("test");
    let b = backend.clone();
    let m = metrics.clone();
    let provider = actix::Supervisor::start(move |_| {
        ProviderConnection::new("p".into(), factory(b), Duration::from_secs(5), m, 100)
    });
    let mut providers = HashMap::new();
    providers.insert("p".to_string(), provider);
    let cache = Cache::new(
        CacheSettings {
            ttl,
            max_entries: 100,
            mailbox: 100,
            refresh: HashMap::new(),
            max_stale: Duration::from_secs(3600),
        },
        providers,
        metrics.clone(),
    )
    .start();
    Rig {
        engine,
        backend,
        metrics,
        registry,
        cache,
        direct: None,
    }
}

fn injector(r: &Rig, concurrency: usize, queue: usize) -> Addr<Injector> {
    injector_with_access(r, concurrency, queue, AccessRules::default())
}

fn injector_with_access(
    r: &Rig,
    concurrency: usize,
    queue: usize,
    access: AccessRules,
) -> Addr<Injector> {
    injector_with(r, concurrency, queue, access, None)
}

fn injector_with(
    r: &Rig,
    concurrency: usize,
    queue: usize,
    access: AccessRules,
    exec_permits: Option<Arc<tokio::sync::Semaphore>>,
) -> Addr<Injector> {
    Injector::new(
        0,
        r.engine.clone() as Arc<dyn ContainerEngine>,
        r.cache.clone(),
        None,
        InjectorSettings {
            concurrency,
            queue_capacity: queue,
            rules: Arc::new(vec![]),
            scope: None,
            access: Arc::new(access),
            digest_key: Arc::new(zeroize::Zeroizing::new(b"test".to_vec())),
            rotation_debounce: Duration::from_millis(50),
            rotation_concurrency: 2,
            audit: None,
            restarter: None,
            direct: r.direct.clone(),
            exec_permits,
        },
        r.metrics.clone(),
        1000,
    )
    .start()
}

fn job(id: &str, trigger: Trigger) -> ContainerJob {
    ContainerJob {
        id: id.into(),
        trigger,
        received: Instant::now(),
    }
}

async fn settle(cond: impl Fn() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn metric_line(r: &Rig, prefix: &str) -> String {
    render(&r.registry)
        .lines()
        .filter(|l| l.starts_with(prefix))
        .collect::<Vec<_>>()
        .join("\n")
}

#[actix_rt::test]
async fn concurrent_misses_cause_one_backend_fetch() {
    let r = rig();
    r.backend.put("app/db", map(&[("password", "pw")]));
    *r.backend.delay.lock().unwrap() = Duration::from_millis(50);
    let futs: Vec<_> = (0..50)
        .map(|_| {
            r.cache.send(GetSecret {
                source: "p/app/db#password".parse().unwrap(),
            })
        })
        .collect();
    for res in futures_util::future::join_all(futs).await {
        assert_eq!(
            res.unwrap()
                .unwrap()
                .data
                .select(Some("password"))
                .unwrap()
                .expose(),
            b"pw"
        );
    }
    assert_eq!(r.backend.fetch_count(), 1);
    // And a later lookup is a hit.
    let _ = r
        .cache
        .send(GetSecret {
            source: "p/app/db".parse().unwrap(),
        })
        .await;
    assert_eq!(r.backend.fetch_count(), 1);
    assert!(
        metric_line(&r, "dso_cache_hits_total").ends_with(" 1"),
        "{}",
        render(&r.registry)
    );
}

#[actix_rt::test]
async fn unknown_provider_is_a_clear_error() {
    let r = rig();
    let e = r
        .cache
        .send(GetSecret {
            source: "nope/x".parse().unwrap(),
        })
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.to_string(), "unknown provider `nope` (not in the config)");
}

#[actix_rt::test]
async fn provider_restarts_after_five_consecutive_failures() {
    let backend = FakeBackend::new();
    *backend.fail_with.lock().unwrap() = Some(BackendError::Unavailable("down".into()));
    let (metrics, registry) = Metrics::new("test");
    let builds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (b, n) = (backend.clone(), builds.clone());
    let f: BackendFactory = Arc::new(move || {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(b.clone() as Arc<dyn SecretBackend>)
    });
    let m = metrics.clone();
    let addr = actix::Supervisor::start(move |_| {
        ProviderConnection::new("p".into(), f, Duration::from_secs(1), m, 100)
    });
    for _ in 0..5 {
        let res = addr.send(Fetch { path: "x".into() }).await;
        assert!(
            matches!(res, Ok(Err(BackendError::Unavailable(_)))),
            "{res:?}"
        );
    }
    settle(|| builds.load(std::sync::atomic::Ordering::SeqCst) == 2).await;
    assert_eq!(
        builds.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "connection rebuilt once"
    );
    let text = render(&registry);
    assert!(
        text.contains("dso_provider_restarts_total{provider=\"p\"} 1"),
        "{text}"
    );
    // "Not found" answers do not count toward a restart.
    *backend.fail_with.lock().unwrap() = None;
    for _ in 0..10 {
        let _ = addr
            .send(Fetch {
                path: "missing".into(),
            })
            .await;
    }
    assert_eq!(builds.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[actix_rt::test]
async fn provider_timeout_applies() {
    let backend = FakeBackend::new();
    *backend.delay.lock().unwrap() = Duration::from_secs(5);
    let (metrics, _r) = Metrics::new("test");
    let addr = ProviderConnection::new(
        "p".into(),
        factory(backend),
        Duration::from_millis(50),
        metrics,
        10,
    )
    .start();
    let res = addr.send(Fetch { path: "x".into() }).await.unwrap();
    assert_eq!(res, Err(BackendError::Timeout(Duration::from_millis(50))));
}

#[actix_rt::test]
async fn one_exec_with_one_tar_for_all_secrets() {
    let r = rig();
    r.backend
        .put("app/db", map(&[("password", "pw1"), ("user", "u1")]));
    r.backend.put(
        "app/api",
        SecretData::Value(SecretValue::from_str_copy("tok")),
    );
    r.engine.add(container(
        "c1",
        &[
            ("dso.secret.db_password", "p/app/db#password"),
            ("dso.secret.db_user", "p/app/db#user"),
            ("dso.secret.api", "p/app/api"),
            ("dso.secret.api.mode", "0440"),
        ],
        &["/run/secrets/dso"],
    ));
    let inj = injector(&r, 4, 100);
    inj.send(job("c1", Trigger::Event(ContainerAction::Start)))
        .await
        .unwrap();
    settle(|| !r.engine.execs().is_empty()).await;
    let execs = r.engine.execs();
    assert_eq!(execs.len(), 1, "one exec");
    let (_, cmd, tar_bytes) = &execs[0];
    assert_eq!(
        &cmd[8..],
        &[
            "api",
            "440",
            "0",
            "0",
            "db_password",
            "400",
            "0",
            "0",
            "db_user",
            "400",
            "0",
            "0"
        ]
    );
    let mut ar = tar::Archive::new(&tar_bytes[..]);
    let mut got = vec![];
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut e, &mut s).unwrap();
        got.push((e.path().unwrap().to_string_lossy().into_owned(), s));
    }
    assert_eq!(
        got,
        vec![
            ("api".into(), "tok".into()),
            ("db_password".into(), "pw1".into()),
            ("db_user".into(), "u1".into())
        ]
    );
    assert_eq!(r.backend.fetch_count(), 2, "one fetch per distinct path");
    settle(|| metric_line(&r, "dso_injections_total").contains("success")).await;
    assert!(metric_line(&r, "dso_injections_total").contains("result=\"success\"} 1"));
}

#[actix_rt::test]
async fn refusals_write_nothing() {
    let r = rig();
    r.backend.put("a", map(&[("k", "v")]));
    r.engine
        .add(container("notmpfs", &[("dso.secret.x", "p/a#k")], &[]));
    r.engine.add(container(
        "badname",
        &[("dso.secret.../x", "p/a#k")],
        &["/run/secrets/dso"],
    ));
    r.engine.add(container(
        "missingkey",
        &[("dso.secret.x", "p/a#nokey")],
        &["/run/secrets/dso"],
    ));
    r.engine.add(container(
        "missingpath",
        &[("dso.secret.x", "p/nothere")],
        &["/run/secrets/dso"],
    ));
    r.engine.add(container(
        "unknownprov",
        &[("dso.secret.x", "q/a")],
        &["/run/secrets/dso"],
    ));
    let inj = injector(&r, 4, 100);
    for id in [
        "notmpfs",
        "badname",
        "missingkey",
        "missingpath",
        "unknownprov",
    ] {
        inj.send(job(id, Trigger::Event(ContainerAction::Start)))
            .await
            .unwrap();
    }
    settle(|| {
        let t = metric_line(&r, "dso_injections_total");
        t.contains("not_tmpfs") && t.contains("invalid_spec") && t.contains("provider_error\"} 3")
    })
    .await;
    let t = metric_line(&r, "dso_injections_total");
    assert!(t.contains("result=\"not_tmpfs\"} 1"), "{t}");
    assert!(t.contains("result=\"invalid_spec\"} 1"), "{t}");
    assert!(t.contains("result=\"provider_error\"} 3"), "{t}");
    assert!(
        r.engine.execs().is_empty(),
        "nothing may be executed for refused containers"
    );
}

#[actix_rt::test]
async fn access_rules_refuse_the_whole_container_before_any_fetch_or_write() {
    use crate::access::{AccessRule, ContainerSelector, Pattern, Subject, COMPOSE_PROJECT_LABEL};
    let r = rig();
    r.backend.put("a/db", map(&[("k", "va")]));
    r.backend.put("b/db", map(&[("k", "vb")]));
    let rules = AccessRules::new(vec![AccessRule {
        name: "access[0]".into(),
        subject: Subject::Containers(ContainerSelector {
            compose_project: Some("a".into()),
            ..Default::default()
        }),
        allow: vec![Pattern::parse("p/a/*").unwrap()],
    }]);
    let tmpfs = &["/run/secrets/dso"];
    r.engine.add(container(
        "mine",
        &[(COMPOSE_PROJECT_LABEL, "a"), ("dso.secret.x", "p/a/db#k")],
        tmpfs,
    ));
    r.engine.add(container(
        "greedy",
        &[
            (COMPOSE_PROJECT_LABEL, "a"),
            ("dso.secret.x", "p/a/db#k"),
            ("dso.secret.y", "p/b/db#k"),
        ],
        tmpfs,
    ));
    r.engine.add(container(
        "other",
        &[(COMPOSE_PROJECT_LABEL, "b"), ("dso.secret.x", "p/a/db#k")],
        tmpfs,
    ));
    let inj = injector_with_access(&r, 4, 100, rules);
    for id in ["mine", "greedy", "other"] {
        inj.send(job(id, Trigger::Event(ContainerAction::Start)))
            .await
            .unwrap();
    }
    inj.send(job("other", Trigger::Rotation)).await.unwrap();
    settle(|| {
        let t = metric_line(&r, "dso_injections_total");
        t.contains("success\"} 1") && t.contains("denied\"} 3")
    })
    .await;
    let t = metric_line(&r, "dso_injections_total");
    assert!(t.contains("result=\"success\"} 1"), "{t}");
    assert!(t.contains("result=\"denied\"} 3"), "{t}");
    let rot = metric_line(&r, "dso_rotations_total");
    assert!(rot.contains("result=\"denied\"} 1"), "{rot}");
    assert!(
        rot.contains("result=\"failed\"} 0"),
        "a denial is not a failure to retry: {rot}"
    );
    let execs = r.engine.execs();
    assert_eq!(execs.len(), 1, "only `mine` is written");
    assert_eq!(execs[0].0, "mine");
    assert_eq!(
        r.backend.fetch_count(),
        1,
        "nothing is fetched for a denied container"
    );
    let status = inj.send(crate::messages::GetShardStatus).await.unwrap();
    let greedy = status.iter().find(|s| s.id == "greedy").unwrap();
    assert_eq!(greedy.result, "denied");
    let message = greedy.message.as_deref().unwrap_or_default();
    assert!(message.contains("p/b/db"), "{message}");
    assert!(!message.contains("p/a/db,"), "{message}");
    assert!(
        message.contains("access[0] (compose_project=a: p/a/*)"),
        "{message}"
    );
}

#[actix_rt::test]
async fn a_burst_for_one_container_collapses() {
    let r = rig();
    r.backend.put("a", map(&[("k", "v")]));
    r.engine.add(container(
        "c",
        &[("dso.secret.x", "p/a#k")],
        &["/run/secrets/dso"],
    ));
    *r.engine.exec_delay.lock().unwrap() = Duration::from_millis(100);
    let inj = injector(&r, 4, 100);
    for _ in 0..1000 {
        inj.send(job("c", Trigger::Event(ContainerAction::Start)))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        r.engine.execs().len(),
        1,
        "1000 identical start events → one injection"
    );
    let t = metric_line(&r, "dso_injections_total");
    assert!(t.contains("result=\"duplicate\"} 1"), "{t}");
}

#[actix_rt::test]
async fn a_full_queue_drops_counts_and_keeps_working() {
    let r = rig();
    r.backend.put("a", map(&[("k", "v")]));
    for i in 0..10 {
        r.engine.add(container(
            &format!("c{i}"),
            &[("dso.secret.x", "p/a#k")],
            &["/run/secrets/dso"],
        ));
    }
    *r.engine.exec_delay.lock().unwrap() = Duration::from_millis(100);
    // One at a time, two may wait.
    let inj = injector(&r, 1, 2);
    for i in 0..10 {
        inj.send(job(
            &format!("c{i}"),
            Trigger::Event(ContainerAction::Start),
        ))
        .await
        .unwrap();
    }
    settle(|| r.engine.execs().len() == 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        r.engine.execs().len(),
        3,
        "1 running + 2 queued; the rest dropped"
    );
    let t = metric_line(&r, "dso_events_dropped_total");
    assert!(t.contains("reason=\"queue_full\"} 7"), "{t}");
}

#[actix_rt::test]
async fn die_then_start_orders_per_container() {
    let r = rig();
    r.backend.put("a", map(&[("k", "v")]));
    r.engine.add(container(
        "c",
        &[("dso.secret.x", "p/a#k")],
        &["/run/secrets/dso"],
    ));
    let inj = injector(&r, 4, 100);
    inj.send(job("c", Trigger::Event(ContainerAction::Start)))
        .await
        .unwrap();
    settle(|| r.engine.execs().len() == 1).await;
    inj.send(job("c", Trigger::Event(ContainerAction::Die)))
        .await
        .unwrap();
    // Restarted: a new StartedAt.
    r.engine
        .containers
        .lock()
        .unwrap()
        .get_mut("c")
        .unwrap()
        .started_at = Some("later".into());
    inj.send(job("c", Trigger::Event(ContainerAction::Start)))
        .await
        .unwrap();
    settle(|| r.engine.execs().len() == 2).await;
    assert_eq!(r.engine.execs().len(), 2, "a restart is injected again");
}

#[actix_rt::test]
async fn supervisor_wires_events_to_injection_and_reconciles_at_start() {
    let engine = FakeEngine::new();
    let backend = FakeBackend::new();
    backend.put("a", map(&[("k", "v")]));
    // Running before the agent: the start-up reconcile must find it.
    engine.add(container(
        "early",
        &[("dso.secret.x", "p/a#k")],
        &["/run/secrets/dso"],
    ));
    let (sup, _registry) = start_agent(&engine, &backend);
    settle(|| engine.execs().len() == 1).await;
    assert_eq!(engine.execs()[0].0, "early");
    engine.add(container(
        "late",
        &[("dso.secret.x", "p/a#k")],
        &["/run/secrets/dso"],
    ));
    assert!(engine.emit(EngineEvent {
        id: "late".into(),
        action: ContainerAction::Start,
        time_nanos: 1,
    }));
    settle(|| engine.execs().len() == 2).await;
    assert_eq!(engine.execs()[1].0, "late");
    assert_eq!(
        backend.fetch_count(),
        1,
        "second container served from cache"
    );
    let ready = sup.send(GetReadiness).await.unwrap();
    assert!(ready.docker, "{ready:?}");
    assert!(
        engine
            .calls()
            .iter()
            .filter(|c| **c == EngineCall::Events)
            .count()
            == 1
    );
}

#[actix_rt::test]
async fn a_backend_change_rotates_every_user_once_and_applies_reload_policies() {
    let engine = FakeEngine::new();
    let backend = FakeBackend::new();
    backend.put("db", map(&[("pw", "v1")]));
    backend.put("other", map(&[("k", "x")]));
    for (id, reload) in [
        ("sig", "signal:SIGHUP"),
        ("rst", "restart"),
        ("non", "none"),
    ] {
        engine.add(container(
            id,
            &[("dso.secret.pw", "p/db#pw"), ("dso.reload", reload)],
            &["/run/secrets/dso"],
        ));
    }
    engine.add(container(
        "unrelated",
        &[("dso.secret.k", "p/other#k")],
        &["/run/secrets/dso"],
    ));
    let (_sup, registry) = start_agent(&engine, &backend);
    settle(|| engine.execs().len() == 4).await;
    assert_eq!(engine.execs().len(), 4, "first injections");
    // Refreshes that find the same value cause nothing.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(engine.execs().len(), 4, "no change, no exec");
    assert!(backend.fetch_count() >= 3, "secrets in use are re-checked");

    *engine.exec_output.lock().unwrap() = "replaced\n".into();
    backend.put("db", map(&[("pw", "v2")]));
    settle(|| engine.execs().len() == 7).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let execs = engine.execs();
    let rotated: Vec<&str> = execs[4..].iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        execs.len(),
        7,
        "each user of the changed secret once: {rotated:?}"
    );
    assert!(!rotated.contains(&"unrelated"));
    let calls = engine.calls();
    let signals: Vec<_> = calls
        .iter()
        .filter(|c| matches!(c, EngineCall::Signal(..)))
        .collect();
    let restarts: Vec<_> = calls
        .iter()
        .filter(|c| matches!(c, EngineCall::Restart(..)))
        .collect();
    assert_eq!(
        signals,
        vec![&EngineCall::Signal("sig".into(), "SIGHUP".into())]
    );
    assert_eq!(restarts, vec![&EngineCall::Restart("rst".into())]);
    let text = render(&registry);
    assert!(
        text.contains("dso_rotations_total{result=\"success\"} 3"),
        "{text}"
    );
}

#[actix_rt::test]
async fn a_swarm_service_is_rolled_once_per_change_and_its_tasks_never_restarted() {
    use crate::messages::RequestRoll;
    use crate::model::SwarmTask;
    use crate::restarter::{Restarter, RestarterSettings};
    let engine = FakeEngine::new();
    let backend = FakeBackend::new();
    backend.put("db", map(&[("pw", "v1")]));
    for (id, service, reload) in [
        ("t1", "svc", "restart"),
        ("t2", "svc", "restart"),
        ("t3", "svc", "restart"),
        ("s1", "sig", "signal:SIGHUP"),
    ] {
        engine.add(container(
            id,
            &[
                ("dso.secret.pw", "p/db#pw"),
                ("dso.reload", reload),
                ("com.docker.swarm.service.id", service),
                ("com.docker.swarm.task.id", &format!("task{id}")),
            ],
            &["/run/secrets/dso"],
        ));
    }
    let (_sup, registry) = start_agent(&engine, &backend);
    settle(|| engine.execs().len() == 4).await;
    *engine.exec_output.lock().unwrap() = "replaced\n".into();
    backend.put("db", map(&[("pw", "v2")]));
    settle(|| engine.execs().len() == 8 && !engine.rolls().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = engine.calls();
    assert!(
        !calls.iter().any(|c| matches!(c, EngineCall::Restart(..))),
        "a Swarm task is never docker-restarted: {calls:?}"
    );
    let rolls: Vec<_> = calls
        .iter()
        .filter(|c| matches!(c, EngineCall::Roll(_, _, true)))
        .collect();
    assert_eq!(
        rolls.len(),
        1,
        "three tasks, one change, one roll: {calls:?}"
    );
    let marks: Vec<_> = calls
        .iter()
        .filter(|c| matches!(c, EngineCall::Roll(_, _, false)))
        .collect();
    assert_eq!(
        marks.len(),
        1,
        "the first deliveries label the service once: {calls:?}"
    );
    let rolled = engine.rolls();
    assert_eq!(rolled.len(), 1);
    assert_eq!(rolled[0].0, "svc");
    assert!(calls.contains(&EngineCall::Signal("s1".into(), "SIGHUP".into())));
    assert!(
        render(&registry).contains("dso_reloads_total{policy=\"restart\",result=\"ok\"} 1"),
        "{}",
        render(&registry)
    );

    // A second agent (its own Restarter) delivering the same change: the engine sees the
    // service's label and does nothing.
    let (metrics, registry2) = Metrics::new("test");
    let settings = RestarterSettings {
        splay: Duration::ZERO,
        ready_timeout: Duration::from_secs(1),
        mailbox: 10,
    };
    let second = Restarter::new(
        engine.clone() as Arc<dyn ContainerEngine>,
        metrics.clone(),
        settings.clone(),
    )
    .start();
    second
        .send(RequestRoll {
            task: SwarmTask {
                service: "svc".into(),
                task: "taskt1".into(),
                container: "t1".into(),
            },
            change: rolled[0].1.clone(),
            roll: true,
        })
        .await
        .unwrap();
    settle(|| {
        engine
            .calls()
            .iter()
            .filter(|c| matches!(c, EngineCall::Roll(..)))
            .count()
            == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        engine.rolls().len(),
        1,
        "the second agent's roll is a no-op"
    );
    assert!(!render(&registry2).contains("result=\"ok\"} 1"));

    // A task started during a rotation gets the new values first and marks the service with
    // them; that mark must not stand in for the roll the older tasks still need.
    let task = SwarmTask {
        service: "svc".into(),
        task: "taskt2".into(),
        container: "t2".into(),
    };
    for roll in [false, true] {
        second
            .send(RequestRoll {
                task: task.clone(),
                change: "next".into(),
                roll,
            })
            .await
            .unwrap();
    }
    settle(|| engine.rolls().len() == 2).await;
    assert_eq!(engine.rolls()[1], ("svc".to_string(), "next".to_string()));

    // A container with forged task labels asks first for the change a real task needs: its
    // refusal must not swallow the real task's roll.
    engine.forged_tasks.lock().unwrap().push("f1".into());
    for container in ["f1", "t3"] {
        second
            .send(RequestRoll {
                task: SwarmTask {
                    service: "svc".into(),
                    task: format!("task{container}"),
                    container: container.into(),
                },
                change: "third".into(),
                roll: true,
            })
            .await
            .unwrap();
    }
    settle(|| engine.rolls().len() == 3).await;
    assert_eq!(engine.rolls()[2], ("svc".to_string(), "third".to_string()));

    // An agent on a worker node: no roll (a manager's agent does it), nothing restarted.
    *engine.worker.lock().unwrap() = true;
    let worker = Restarter::new(
        engine.clone() as Arc<dyn ContainerEngine>,
        metrics,
        settings,
    )
    .start();
    worker
        .send(RequestRoll {
            task: SwarmTask {
                service: "svc".into(),
                task: "taskt1".into(),
                container: "t1".into(),
            },
            change: "another".into(),
            roll: true,
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(engine.rolls().len(), 3);
    assert!(!engine
        .calls()
        .iter()
        .any(|c| matches!(c, EngineCall::Restart(..))));
}

#[actix_rt::test]
async fn restarts_of_one_compose_service_go_one_at_a_time() {
    use crate::messages::RequestRestart;
    use crate::restarter::{Restarter, RestarterSettings};
    let engine = FakeEngine::new();
    for id in ["w1", "w2", "w3", "solo"] {
        let mut c = container(id, &[], &[]);
        if id != "solo" {
            c.labels
                .insert("com.docker.compose.project".into(), "shop".into());
            c.labels
                .insert("com.docker.compose.service".into(), "web".into());
        }
        engine.add(c);
    }
    let (metrics, registry) = Metrics::new("test");
    let r = Restarter::new(
        engine.clone() as Arc<dyn ContainerEngine>,
        metrics,
        RestarterSettings {
            splay: Duration::from_millis(30),
            ready_timeout: Duration::from_secs(5),
            mailbox: 100,
        },
    )
    .start();
    for id in ["w1", "w2", "w3"] {
        r.send(RequestRestart {
            id: id.into(),
            group: Some("shop/web".into()),
        })
        .await
        .unwrap();
    }
    r.send(RequestRestart {
        id: "solo".into(),
        group: None,
    })
    .await
    .unwrap();
    settle(|| render(&registry).contains("dso_reloads_total{policy=\"restart\",result=\"ok\"} 4"))
        .await;
    // Within the service: each restart only after the previous container was seen running again.
    let calls: Vec<EngineCall> = engine
        .calls()
        .into_iter()
        .filter(|c| match c {
            EngineCall::Restart(id) | EngineCall::Inspect(id) => id.starts_with('w'),
            _ => false,
        })
        .collect();
    let restarts: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c, EngineCall::Restart(_)))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(restarts.len(), 3, "{calls:?}");
    for pair in restarts.windows(2) {
        let prev = match &calls[pair[0]] {
            EngineCall::Restart(id) => id.clone(),
            _ => unreachable!(),
        };
        assert!(
            calls[pair[0]..pair[1]].contains(&EngineCall::Inspect(prev.clone())),
            "{prev} must be checked running before the next restart: {calls:?}"
        );
    }
}

#[actix_rt::test]
async fn a_reconcile_forgets_containers_that_are_gone() {
    let r = rig();
    r.backend.put("a", map(&[("k", "v")]));
    r.engine.add(container(
        "c",
        &[("dso.secret.x", "p/a#k")],
        &["/run/secrets/dso"],
    ));
    let inj = injector(&r, 4, 100);
    inj.send(job("c", Trigger::Event(ContainerAction::Start)))
        .await
        .unwrap();
    settle(|| metric_line(&r, "dso_managed_containers").ends_with(" 1")).await;
    assert_eq!(
        inj.send(crate::messages::GetShardStatus)
            .await
            .unwrap()
            .len(),
        1
    );
    inj.send(crate::messages::Prune {
        running: Arc::new(std::collections::HashSet::new()),
    })
    .await
    .unwrap();
    assert!(inj
        .send(crate::messages::GetShardStatus)
        .await
        .unwrap()
        .is_empty());
    assert!(metric_line(&r, "dso_managed_containers").ends_with(" 0"));
}

#[actix_rt::test]
async fn rotations_are_bounded_per_shard() {
    let r = rig();
    r.backend.put("a", map(&[("k", "v")]));
    for i in 0..6 {
        r.engine.add(container(
            &format!("c{i}"),
            &[("dso.secret.x", "p/a#k")],
            &["/run/secrets/dso"],
        ));
    }
    *r.engine.exec_delay.lock().unwrap() = Duration::from_millis(100);
    // Shard concurrency 4, rotation concurrency 2 (rig).
    let inj = injector(&r, 4, 100);
    for i in 0..6 {
        inj.send(job(&format!("c{i}"), Trigger::Rotation))
            .await
            .unwrap();
    }
    settle(|| r.engine.execs().len() == 6).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(r.engine.execs().len(), 6);
    assert_eq!(
        r.engine
            .execs_max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst),
        2,
        "at most 2 rotations at once"
    );
}

#[actix_rt::test]
async fn execs_share_one_agent_wide_budget_apart_from_the_job_slots() {
    let r = rig();
    r.backend.put("a", map(&[("k", "v")]));
    for i in 0..12 {
        r.engine.add(container(
            &format!("c{i}"),
            &[("dso.secret.x", "p/a#k")],
            &["/run/secrets/dso"],
        ));
    }
    *r.engine.exec_delay.lock().unwrap() = Duration::from_millis(100);
    // Two shards of 8 slots each, one budget of 3 execs for both.
    let permits = Arc::new(tokio::sync::Semaphore::new(3));
    let shards = [
        injector_with(&r, 8, 100, AccessRules::default(), Some(permits.clone())),
        injector_with(&r, 8, 100, AccessRules::default(), Some(permits)),
    ];
    for i in 0..12 {
        shards[i % 2]
            .send(job(&format!("c{i}"), Trigger::Reconcile))
            .await
            .unwrap();
    }
    settle(|| r.engine.execs().len() == 12).await;
    assert_eq!(
        r.engine
            .execs_max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst),
        3,
        "at most 3 execs at once across both shards"
    );
}

#[actix_rt::test]
async fn stale_if_error_serves_the_last_value_while_the_backend_is_down() {
    let r = rig_with_ttl(Duration::from_millis(100));
    let (backend, registry, cache) = (&r.backend, &r.registry, &r.cache);
    backend.put("db", map(&[("pw", "v1")]));
    let get = || {
        cache.send(GetSecret {
            source: "p/db#pw".parse().unwrap(),
        })
    };
    assert!(get().await.unwrap().is_ok());
    tokio::time::sleep(Duration::from_millis(150)).await;
    *backend.fail_with.lock().unwrap() = Some(BackendError::Unavailable("down".into()));
    let stale = get().await.unwrap().expect("stale value served");
    assert_eq!(stale.data.select(Some("pw")).unwrap().expose(), b"v1");
    assert!(render(registry).contains("dso_cache_stale_served_total 1"));
    // An answer such as "not found" is not an outage: no stale value for it.
    *backend.fail_with.lock().unwrap() = Some(BackendError::NotFound { path: "db".into() });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(get().await.unwrap().is_err());
}

#[actix_rt::test]
async fn the_circuit_opens_after_a_restart_fails_fast_and_closes_on_a_good_trial() {
    let backend = FakeBackend::new();
    backend.put("x", map(&[("k", "v")]));
    *backend.fail_with.lock().unwrap() = Some(BackendError::Unavailable("down".into()));
    let (metrics, registry) = Metrics::new("test");
    let (b, m) = (backend.clone(), metrics.clone());
    let addr = actix::Supervisor::start(move |_| {
        ProviderConnection::new("p".into(), factory(b), Duration::from_secs(1), m, 100)
    });
    for _ in 0..5 {
        let _ = addr.send(Fetch { path: "x".into() }).await;
    }
    settle(|| render(&registry).contains("dso_provider_circuit_state{provider=\"p\"} 1")).await;
    let before = backend.fetch_count();
    for _ in 0..20 {
        let r = addr.send(Fetch { path: "x".into() }).await.unwrap();
        assert!(
            matches!(r, Err(BackendError::Unavailable(ref m)) if m.contains("circuit open")),
            "{r:?}"
        );
    }
    assert_eq!(
        backend.fetch_count(),
        before,
        "an open circuit does not touch the backend"
    );
    // The backend recovers; after the backoff one trial goes through and closes the circuit.
    *backend.fail_with.lock().unwrap() = None;
    tokio::time::sleep(Duration::from_millis(1400)).await;
    let r = addr.send(Fetch { path: "x".into() }).await.unwrap();
    assert!(r.is_ok(), "{r:?}");
    let text = render(&registry);
    assert!(
        text.contains("dso_provider_circuit_state{provider=\"p\"} 0"),
        "{text}"
    );
    assert!(text.contains("result=\"circuit_open\"} 20"), "{text}");
}

#[actix_rt::test]
async fn a_burst_of_500_starts_sharing_5_secrets_costs_5_backend_reads() {
    let r = rig();
    for i in 0..5 {
        r.backend.put(&format!("s{i}"), map(&[("k", "v")]));
    }
    *r.backend.delay.lock().unwrap() = Duration::from_millis(50);
    let futs: Vec<_> = (0..500)
        .map(|i| {
            r.cache.send(GetSecret {
                source: format!("p/s{}#k", i % 5).parse().unwrap(),
            })
        })
        .collect();
    for res in futures_util::future::join_all(futs).await {
        assert!(res.unwrap().is_ok());
    }
    assert_eq!(r.backend.fetch_count(), 5);
}

#[actix_rt::test]
async fn the_token_bucket_paces_requests_beyond_the_burst() {
    let backend = FakeBackend::new();
    backend.put("x", map(&[("k", "v")]));
    let (metrics, _r) = Metrics::new("test");
    // 20 per second, bursts of 5: 15 requests need about (15 - 5) / 20 s = 0.5 s.
    let addr = ProviderConnection::new(
        "p".into(),
        factory(backend.clone()),
        Duration::from_secs(5),
        metrics,
        100,
    )
    .with_rate_limit(Some((20.0, 5)))
    .start();
    let t = std::time::Instant::now();
    let futs: Vec<_> = (0..15)
        .map(|_| addr.send(Fetch { path: "x".into() }))
        .collect();
    for r in futures_util::future::join_all(futs).await {
        assert!(r.unwrap().is_ok());
    }
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(450), "paced: {took:?}");
    assert_eq!(backend.fetch_count(), 15, "paced, not refused");
}

#[actix_rt::test]
async fn versioned_backends_are_checked_by_version_and_status_shows_it() {
    let engine = FakeEngine::new();
    let backend = FakeBackend::new();
    backend
        .versioned
        .store(true, std::sync::atomic::Ordering::SeqCst);
    backend.put("db", map(&[("pw", "v1"), ("user", "app")]));
    engine.add(container(
        "c1",
        &[
            ("dso.secret.pw", "p/db#pw"),
            ("dso.secret.user", "p/db#user"),
        ],
        &["/run/secrets/dso"],
    ));
    let (sup, _registry) = start_agent(&engine, &backend);
    settle(|| engine.execs().len() == 1).await;
    let status = sup.send(crate::messages::GetStatus).await.unwrap();
    let files = &status.containers[0].files;
    assert_eq!(files.len(), 2, "{status:?}");
    assert!(
        files.iter().all(|f| f.version.as_deref() == Some("1")),
        "{files:?}"
    );
    assert_ne!(files[0].digest, files[1].digest, "per-file digests");
    let since_user = files.iter().find(|f| f.name == "user").unwrap().since;
    assert!(since_user.is_some());

    // Unchanged versions: the refreshes read versions only, no value.
    let fetches = backend.fetch_count();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(backend.version_count() >= 2, "versions are read");
    assert_eq!(
        backend.fetch_count(),
        fetches,
        "no value fetched while the version is unchanged"
    );

    // A new version is fetched and rotated once.
    *engine.exec_output.lock().unwrap() = "replaced\n".into();
    tokio::time::sleep(Duration::from_millis(1100)).await; // `since` is in whole seconds
    backend.put("db", map(&[("pw", "v2"), ("user", "app")]));
    settle(|| engine.execs().len() == 2).await;
    assert_eq!(engine.execs().len(), 2);
    let status = sup.send(crate::messages::GetStatus).await.unwrap();
    let files = &status.containers[0].files;
    assert!(
        files.iter().all(|f| f.version.as_deref() == Some("2")),
        "{files:?}"
    );
    let user = files.iter().find(|f| f.name == "user").unwrap();
    let pw = files.iter().find(|f| f.name == "pw").unwrap();
    assert_eq!(
        user.since, since_user,
        "an unchanged file keeps its `since`"
    );
    assert!(pw.since > since_user, "a rotated file gets a new `since`");
}

/// The rig with a direct writer answering `respond`, and container `c1` asking for one file.
fn direct_rig(respond: crate::fake::FakeDirect) -> (Rig, Arc<crate::fake::FakeDirectWriter>) {
    let mut r = rig();
    r.backend.put("app", map(&[("k", "v1")]));
    r.engine.add(container(
        "c1",
        &[("dso.secret.f", "p/app#k"), ("dso.reload", "signal:SIGHUP")],
        &["/run/secrets/dso"],
    ));
    let w = crate::fake::FakeDirectWriter::new(respond);
    r.direct = Some(w.clone() as Arc<dyn crate::direct::DirectWriter>);
    (r, w)
}

#[actix_rt::test]
async fn direct_writes_replace_exec_and_keep_unchanged_and_reload_semantics() {
    let (r, w) = direct_rig(crate::fake::FakeDirect::Write);
    let inj = injector(&r, 2, 10);
    inj.send(job("c1", Trigger::Event(ContainerAction::Start)))
        .await
        .unwrap();
    settle(|| w.calls().len() == 1).await;
    let call = &w.calls()[0];
    assert_eq!(
        (
            call.id.as_str(),
            call.pid,
            call.dir.as_str(),
            call.names.clone()
        ),
        ("c1", 4242, "/run/secrets/dso", vec!["f".to_string()])
    );
    // Same content again (manual): unchanged, no reload. New content: replaced, reload.
    inj.send(job("c1", Trigger::Manual)).await.unwrap();
    settle(|| w.calls().len() == 2).await;
    r.backend.put("app", map(&[("k", "v2")]));
    r.cache
        .send(crate::messages::CheckNow {
            provider: "p".into(),
            path: "app".into(),
        })
        .await
        .ok();
    inj.send(job("c1", Trigger::Manual)).await.unwrap();
    settle(|| w.calls().len() == 3).await;
    settle(|| {
        r.engine
            .calls()
            .iter()
            .any(|c| matches!(c, EngineCall::Signal(..)))
    })
    .await;
    assert!(r.engine.execs().is_empty(), "no exec when direct works");
    let signals = r
        .engine
        .calls()
        .iter()
        .filter(|c| matches!(c, EngineCall::Signal(..)))
        .count();
    assert_eq!(signals, 1, "one reload, for the replacement only");
    assert!(metric_line(&r, "dso_injections_by_mode_total{mode=\"direct\"}").ends_with(" 3"));
    assert!(metric_line(&r, "dso_injections_by_mode_total{mode=\"exec\"}").ends_with(" 0"));
    assert!(metric_line(&r, "dso_injections_total{result=\"unchanged\"}").ends_with(" 1"));
}

#[actix_rt::test]
async fn a_fallback_reason_sends_the_write_through_exec_and_is_counted() {
    let (r, w) = direct_rig(crate::fake::FakeDirect::Fallback(
        crate::direct::FallbackReason::UserNamespace,
    ));
    let inj = injector(&r, 2, 10);
    for _ in 0..2 {
        inj.send(job("c1", Trigger::Manual)).await.unwrap();
    }
    settle(|| r.engine.execs().len() == 2).await;
    assert_eq!(w.calls().len(), 2);
    assert!(
        metric_line(&r, "dso_direct_fallbacks_total{reason=\"user_namespace\"}").ends_with(" 2"),
        "{}",
        render(&r.registry)
    );
    assert!(metric_line(&r, "dso_injections_by_mode_total{mode=\"exec\"}").ends_with(" 2"));
    assert!(metric_line(&r, "dso_direct_fallbacks_total{reason=\"proc_denied\"}").ends_with(" 0"));
}

#[actix_rt::test]
async fn direct_refusals_do_not_fall_back_to_exec() {
    for (respond, result) in [
        (crate::fake::FakeDirect::NotTmpfs, "not_tmpfs"),
        (crate::fake::FakeDirect::Gone, "container_gone"),
        (crate::fake::FakeDirect::Fail, "write_failed"),
    ] {
        let (r, w) = direct_rig(respond);
        let inj = injector(&r, 2, 10);
        inj.send(job("c1", Trigger::Manual)).await.unwrap();
        let series = format!("dso_injections_total{{result=\"{result}\"}}");
        settle(|| metric_line(&r, &series).ends_with(" 1")).await;
        assert!(
            metric_line(&r, &series).ends_with(" 1"),
            "{}",
            render(&r.registry)
        );
        assert_eq!(w.calls().len(), 1);
        assert!(
            r.engine.execs().is_empty(),
            "{result}: no exec after a refusal"
        );
    }
}

#[actix_rt::test]
async fn an_exec_that_fails_because_the_container_stopped_counts_as_gone_not_failed() {
    let r = rig();
    r.backend.put("db", map(&[("pw", "v1")]));
    r.engine.add(container(
        "c1",
        &[("dso.secret.pw", "p/db#pw")],
        &["/run/secrets/dso"],
    ));
    *r.engine.exec_exit.lock().unwrap() = 137;
    *r.engine.exec_delay.lock().unwrap() = Duration::from_millis(200);
    let inj = injector(&r, 4, 100);
    inj.send(job("c1", Trigger::Event(ContainerAction::Start)))
        .await
        .unwrap();
    // The container is stopped while the exec runs (docker rm -f during an injection).
    settle(|| !r.engine.execs().is_empty()).await;
    r.engine
        .containers
        .lock()
        .unwrap()
        .get_mut("c1")
        .unwrap()
        .running = false;
    settle(|| render(&r.registry).contains("dso_injections_total{result=\"container_gone\"} 1"))
        .await;
    let text = render(&r.registry);
    assert!(
        text.contains("dso_injections_total{result=\"container_gone\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("dso_injections_total{result=\"exec_failed\"} 0"),
        "{text}"
    );

    // Still running: a failed exec is a failure.
    r.engine.add(container(
        "c2",
        &[("dso.secret.pw", "p/db#pw")],
        &["/run/secrets/dso"],
    ));
    inj.send(job("c2", Trigger::Event(ContainerAction::Start)))
        .await
        .unwrap();
    settle(|| render(&r.registry).contains("dso_injections_total{result=\"exec_failed\"} 1")).await;
    assert!(render(&r.registry).contains("dso_injections_total{result=\"exec_failed\"} 1"));
}

#[actix_rt::test]
async fn a_restart_requested_again_while_its_call_runs_is_one_restart_with_one_outcome() {
    use crate::messages::RequestRestart;
    use crate::restarter::{Restarter, RestarterSettings};
    let engine = FakeEngine::new();
    engine.add(container("c", &[], &[]));
    if let Ok(mut d) = engine.restart_delay.lock() {
        *d = Duration::from_millis(300);
    }
    let (metrics, registry) = Metrics::new("test");
    let r = Restarter::new(
        engine.clone() as Arc<dyn ContainerEngine>,
        metrics,
        RestarterSettings {
            splay: Duration::ZERO,
            ready_timeout: Duration::from_secs(5),
            mailbox: 100,
        },
    )
    .start();
    let ask = || RequestRestart {
        id: "c".into(),
        group: None,
    };
    r.send(ask()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A second rotation replaced files while the restart call runs: the container starts afresh
    // with the current values anyway.
    r.send(ask()).await.unwrap();
    let restarts = || {
        engine
            .calls()
            .iter()
            .filter(|c| matches!(c, EngineCall::Restart(_)))
            .count()
    };
    settle(|| render(&registry).contains("dso_reloads_total{policy=\"restart\",result=\"ok\"} 1"))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = render(&registry);
    assert_eq!(restarts(), 1, "{:?}", engine.calls());
    assert!(
        text.contains("dso_reloads_total{policy=\"restart\",result=\"ok\"} 1")
            && !text.contains("result=\"error\"} 1"),
        "{text}"
    );
    // After the call returned, new values went into the restarted container: a new restart.
    r.send(ask()).await.unwrap();
    settle(|| render(&registry).contains("dso_reloads_total{policy=\"restart\",result=\"ok\"} 2"))
        .await;
    assert_eq!(restarts(), 2, "{:?}", engine.calls());
}
