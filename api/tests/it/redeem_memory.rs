//! A flood of redeems with random links, as from many addresses at once, against the api binary in a
//! process of its own: its peak memory stays bounded and every answer is still the right one.

use std::time::{Duration, Instant};

use resetmail_testkit::{PATIENCE, broker::TestBroker, db::TestDb, eventually, process::Process};
use serde_json::json;
use tokio::task::JoinSet;
use uuid::Uuid;

/// Redeems sent at once.
const FLOOD: usize = 500;
/// The api's peak resident memory may be this much, plus [`PER_CORE_KIB`] for each core. Idle it holds
/// about 25 MiB, and 500 connections at once some 20 MiB more.
const BASE_KIB: u64 = 64 * 1024;
/// Each password hashed at once holds argon2's 19 MiB, and the api hashes one per core at once. Without
/// that bound the 500 hashes would run together, about 9.5 GiB.
const PER_CORE_KIB: u64 = 24 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_redeems_with_random_links_keeps_the_api_small_and_every_answer_right() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let mut env = crate::binary::environment(&db.config, &broker);
    // The flood takes about 20 s on two cores; a loaded machine must not turn it into 503s.
    env.push(("RESETMAIL_REQUEST_TIMEOUT", "120s".into()));
    env.push(("RUST_LOG", "warn,resetmail_api=info".into()));
    let api = Process::start(crate::binary::BINARY, &[], &env);
    let base = format!("http://{}", crate::binary::http_addr(&api).await);
    // The same TLS provider as the api's own clients (reqwest is built without one of its own).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let healthz = format!("{base}/healthz");
    eventually("the api to answer /healthz", PATIENCE, || {
        let asked = client.get(&healthz).send();
        async move { asked.await.ok()?.status().is_success().then_some(()) }
    })
    .await;
    let idle_kib = peak_rss_kib(&api);

    let started = Instant::now();
    let mut flood = JoinSet::new();
    for n in 0..FLOOD {
        let request = client
            .patch(format!("{base}/api/v4/user/reset/{}", Uuid::new_v4()))
            .json(&json!({
                "password": format!("flood password {n}"),
                "secret": format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple()),
            }));
        flood.spawn(async move {
            let answer = request
                .send()
                .await
                .map_err(|error| format!("redeem {n}: no answer: {error:?}"))?;
            let status = answer.status().as_u16();
            let text = answer.text().await.unwrap_or_default();
            Ok::<_, String>((status, text))
        });
    }
    let mut answers = Vec::with_capacity(FLOOD);
    while let Some(answer) = flood.join_next().await {
        answers.push(answer.unwrap());
    }
    let elapsed = started.elapsed();
    let peak_kib = peak_rss_kib(&api);
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get() as u64);
    let limit_kib = BASE_KIB + PER_CORE_KIB * cores;
    eprintln!(
        "{FLOOD} redeems in {} ms; the api's peak RSS: {} MiB idle, {} MiB after the flood (limit {} MiB for {cores} cores)",
        elapsed.as_millis(),
        idle_kib / 1024,
        peak_kib / 1024,
        limit_kib / 1024
    );

    let expired = json!({"code": 40030, "msg": "Link is expired"});
    for answer in &answers {
        let (status, text) = answer.as_ref().unwrap();
        let body: serde_json::Value =
            serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"));
        assert_eq!(
            (*status, body["code"].clone(), body["msg"].clone()),
            (200, expired["code"].clone(), expired["msg"].clone()),
            "{text}"
        );
    }
    assert!(
        peak_kib < limit_kib,
        "the api's peak RSS was {} MiB, over {} MiB",
        peak_kib / 1024,
        limit_kib / 1024
    );
}

/// The api's peak resident memory so far, in KiB; panics if it has exited.
fn peak_rss_kib(api: &Process) -> u64 {
    api.peak_rss_bytes()
        .unwrap_or_else(|| panic!("the api is not running:\n{}", api.stderr().join("\n")))
        / 1024
}
