//! The operator's toolkit: dead-letter commands, delivery status, template preview, retention, and
//! several workers sharing one queue.

use resetmail_shared::db::{deliveries::Outcome, users::UserStatus};
use resetmail_testkit::{
    PATIENCE, broker::TestBroker, db::TestDb, eventually, smtp_sink::SmtpSink,
};
use resetmail_worker::{
    commands::{self, DlqCommand, StatusArgs, TemplateCommand},
    config::WorkerConfig,
};
use serde_json::Value;
use uuid::Uuid;

use crate::harness::{
    TestApi, TestWorker, decided, job_for, per_recipient, publish, worker_config,
};

pub(crate) async fn dlq(config: &WorkerConfig, command: DlqCommand) -> String {
    let mut out = Vec::new();
    commands::dlq(config, &command, &mut out)
        .await
        .unwrap_or_else(|error| panic!("{command:?}: {error:#}"));
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) async fn status(config: &WorkerConfig, args: StatusArgs) -> String {
    let mut out = Vec::new();
    commands::status(config, &args, &mut out)
        .await
        .unwrap_or_else(|error| panic!("{error:#}"));
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn status_args() -> StatusArgs {
    StatusArgs {
        email: None,
        job: None,
        correlation_id: None,
        json: false,
        show_addresses: false,
    }
}

#[tokio::test]
async fn dead_letters_can_be_listed_shown_replayed_and_purged() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let config = worker_config(&db.config, &broker.config, &sink, &[]);
    let worker = TestWorker::start(config.clone());
    let mut jobs = Vec::new();
    for n in 0..3 {
        let email = format!("gone{n}@example.com");
        db.add_user(&email, None, None, UserStatus::Active).await;
        sink.reject_recipient(&email, 550, "5.1.1 no such mailbox");
        let job = job_for(&email);
        publish(&broker, &job).await;
        jobs.push(job);
    }
    broker
        .wait_for_count(&broker.topology.dead_letter_queue(), 3, PATIENCE)
        .await;

    // list: a table, and nothing consumed.
    let table = dlq(
        &config,
        DlqCommand::List {
            limit: 50,
            json: false,
            show_addresses: false,
        },
    )
    .await;
    for job in &jobs {
        assert!(table.contains(&job.job_id.to_string()), "{table}");
    }
    assert!(
        table.contains("permanent") && table.contains("g***@example.com") && table.contains("550"),
        "{table}"
    );
    assert!(
        !table.contains("gone0@example.com"),
        "unmasked address in the list:\n{table}"
    );
    assert!(
        table.contains("3 shown, 3 in the dead-letter queue"),
        "{table}"
    );
    broker
        .wait_for_count(&broker.topology.dead_letter_queue(), 3, PATIENCE)
        .await;
    let listed: Value = serde_json::from_str(
        &dlq(
            &config,
            DlqCommand::List {
                limit: 2,
                json: true,
                show_addresses: false,
            },
        )
        .await,
    )
    .unwrap_or_default();
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    assert_eq!(listed[0]["attempts"], Value::from(1));

    // show: headers and body of one.
    let shown: Value = serde_json::from_str(
        &dlq(
            &config,
            DlqCommand::Show {
                job_id: jobs[1].job_id,
                show_addresses: false,
            },
        )
        .await,
    )
    .unwrap_or_default();
    assert_eq!(shown["job_id"], Value::from(jobs[1].job_id.to_string()));
    assert_eq!(
        shown["headers"]["x-resetmail-error-class"],
        Value::from("permanent")
    );
    let body: Value =
        serde_json::from_str(shown["body"].as_str().unwrap_or_default()).unwrap_or_default();
    assert_eq!(body["job_id"], Value::from(jobs[1].job_id.to_string()));
    assert_eq!(body["email"], Value::from("g***@example.com"));
    broker
        .wait_for_count(&broker.topology.dead_letter_queue(), 3, PATIENCE)
        .await;

    // replay one: the mailbox exists again; the job is sent once, with a fresh attempt count.
    sink.clear_faults();
    let replayed = dlq(
        &config,
        DlqCommand::Replay {
            job_id: Some(jobs[0].job_id),
            all: false,
        },
    )
    .await;
    assert!(replayed.contains("replayed job"), "{replayed}");
    let row = eventually("the replayed job to be sent", PATIENCE, || async {
        let row = decided(&db, jobs[0].job_id).await;
        (row.outcome == Outcome::Sent).then_some(row)
    })
    .await;
    assert_eq!(
        row.attempts, 1,
        "the replay did not reset the attempt count"
    );
    broker
        .wait_for_count(&broker.topology.dead_letter_queue(), 2, PATIENCE)
        .await;

    // purge --older-than keeps recent ones; replay --all takes the rest.
    assert!(
        dlq(
            &config,
            DlqCommand::Purge {
                older_than: Some(std::time::Duration::from_secs(3600))
            }
        )
        .await
        .contains("purged 0")
    );
    broker
        .wait_for_count(&broker.topology.dead_letter_queue(), 2, PATIENCE)
        .await;
    assert!(
        dlq(
            &config,
            DlqCommand::Replay {
                job_id: None,
                all: true
            }
        )
        .await
        .contains("replayed 2")
    );
    sink.wait_for(3, PATIENCE).await;
    for job in &jobs {
        eventually("every replayed job to be sent", PATIENCE, || async {
            (decided(&db, job.job_id).await.outcome == Outcome::Sent).then_some(())
        })
        .await;
    }
    let per_recipient = per_recipient(&sink);
    assert!(
        per_recipient.values().all(|count| *count == 1) && per_recipient.len() == 3,
        "{per_recipient:?}"
    );

    // purge everything.
    broker.publish_raw(b"broken", Some("broken-1")).await;
    broker
        .wait_for_count(&broker.topology.dead_letter_queue(), 1, PATIENCE)
        .await;
    assert!(
        dlq(&config, DlqCommand::Purge { older_than: None })
            .await
            .contains("purged 1")
    );
    assert_eq!(broker.count(&broker.topology.dead_letter_queue()).await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn status_tells_what_happened_to_an_address_a_job_or_a_request() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let config = worker_config(&db.config, &broker.config, &sink, &[]);
    let worker = TestWorker::start(config.clone());
    db.add_user("jane@example.com", None, None, UserStatus::Active)
        .await;
    let (first, second) = (job_for("jane@example.com"), job_for("Jane@Example.com"));
    publish(&broker, &first).await;
    publish(&broker, &second).await;
    decided(&db, first.job_id).await;
    decided(&db, second.job_id).await;

    let by_email = status(
        &config,
        StatusArgs {
            email: Some("JANE@example.com".into()),
            ..status_args()
        },
    )
    .await;
    assert!(
        by_email.contains("sent")
            && by_email.contains("throttled")
            && by_email.contains("2 request(s)"),
        "{by_email}"
    );
    assert!(
        by_email.contains(&format!("<{}@cloud.example.com>", first.job_id))
            || by_email.contains(&format!("<{}@cloud.example.com>", second.job_id)),
        "{by_email}"
    );
    assert!(
        !by_email.contains("jane@example.com"),
        "unmasked address:\n{by_email}"
    );

    let by_job: Value = serde_json::from_str(
        &status(
            &config,
            StatusArgs {
                job: Some(first.job_id),
                json: true,
                ..status_args()
            },
        )
        .await,
    )
    .unwrap_or_default();
    assert_eq!(by_job.as_array().map(Vec::len), Some(1));
    assert_eq!(by_job[0]["job_id"], Value::from(first.job_id.to_string()));
    let by_request = status(
        &config,
        StatusArgs {
            correlation_id: Some(second.correlation_id),
            ..status_args()
        },
    )
    .await;
    assert!(
        by_request.contains(&second.job_id.to_string()) && by_request.contains("1 request(s)"),
        "{by_request}"
    );
    let nothing = status(
        &config,
        StatusArgs {
            job: Some(Uuid::new_v4()),
            ..status_args()
        },
    )
    .await;
    assert!(nothing.contains("0 request(s)"), "{nothing}");
    worker.stop().await;
}

#[tokio::test]
async fn template_preview_renders_the_chosen_language_and_refuses_a_broken_override() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let config = worker_config(&db.config, &broker.config, &sink, &[]);
    let mut out = Vec::new();
    commands::template(
        &config,
        &TemplateCommand::Preview {
            lang: "zh-CN".into(),
            html: false,
            text: true,
        },
        &mut out,
    )
    .unwrap_or_else(|error| panic!("{error:#}"));
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("https://cloud.example.com/session/reset?id=") && text.contains("1 小时"),
        "{text}"
    );

    let dir = std::env::temp_dir().join(format!("resetmail-override-{}", Uuid::new_v4()));
    let lang = dir.join("reset/en-US");
    std::fs::create_dir_all(&lang).unwrap();
    for (part, source) in [
        ("subject.hbs", "[{{site_name}}] Reset"),
        ("body.html.hbs", "<p>{{#if link}}</p>"),
        ("body.txt.hbs", "{{link}}"),
    ] {
        std::fs::write(lang.join(part), source).unwrap();
    }
    let mut broken = config.clone();
    broken.templates_dir = Some(dir.clone());
    let error = commands::template(
        &broken,
        &TemplateCommand::Preview {
            lang: "en-US".into(),
            html: true,
            text: false,
        },
        &mut Vec::new(),
    )
    .err()
    .map(|error| format!("{error:#}"));
    let _ = std::fs::remove_dir_all(&dir);
    let error = error.unwrap_or_else(|| panic!("a broken override was accepted"));
    assert!(
        error.contains("reset/en-US/body.html.hbs does not compile at line 1"),
        "{error}"
    );
}

/// The worker's prune with the shipped retention of 30 days: delivery rows and tokens deleted.
async fn prune_thirty_days(db: &TestDb) -> (u64, u64) {
    resetmail_worker::prune_once(&db.pool, std::time::Duration::from_secs(30 * 86_400))
        .await
        .unwrap()
}

/// The number `query` counts in the test's database.
async fn count(db: &TestDb, query: &'static str) -> i64 {
    sqlx::query_scalar(query).fetch_one(&db.pool).await.unwrap()
}

#[tokio::test]
async fn retention_deletes_old_rows_and_dead_tokens_only() {
    let db = TestDb::new().await;
    let user = db
        .add_user("jane@example.com", None, None, UserStatus::Active)
        .await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO deliveries (job_id, correlation_id, email, requested_at, outcome)
         VALUES ('{}', gen_random_uuid(), 'jane@example.com', now() - interval '40 days', 'sent'),
                ('{}', gen_random_uuid(), 'jane@example.com', now() - interval '1 day', 'sent');
         INSERT INTO password_reset_tokens (user_id, token_hash, job_id, created_at, expires_at, used_at)
         VALUES ({id}, sha256('old'), gen_random_uuid(), now() - interval '2 days', now() - interval '2 days', NULL),
                ({id}, sha256('used'), gen_random_uuid(), now() - interval '2 days', now() + interval '1 hour', now()),
                ({id}, sha256('live'), gen_random_uuid(), now(), now() + interval '1 hour', NULL);",
        Uuid::new_v4(),
        Uuid::new_v4(),
        id = user.id
    )))
    .execute(&db.pool)
    .await
    .unwrap();

    let pruned = prune_thirty_days(&db).await;
    assert_eq!(pruned, (1, 2));
    let left = count(
        &db,
        "SELECT count(*) FROM password_reset_tokens WHERE token_hash = sha256('live')",
    )
    .await;
    assert_eq!(left, 1);
}

#[tokio::test]
async fn a_backlog_of_old_rows_larger_than_a_batch_is_pruned_through_indexes() {
    let db = TestDb::new().await;
    let user = db
        .add_user("jane@example.com", None, None, UserStatus::Active)
        .await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO deliveries (job_id, correlation_id, email, requested_at, outcome)
         SELECT gen_random_uuid(), gen_random_uuid(), 'jane@example.com',
                now() - interval '40 days' + n * interval '1 second', 'sent'
           FROM generate_series(1, 12345) AS n;
         INSERT INTO deliveries (job_id, correlation_id, email, requested_at, outcome)
         SELECT gen_random_uuid(), gen_random_uuid(), 'jane@example.com', now(), 'sent'
           FROM generate_series(1, 10);
         INSERT INTO password_reset_tokens (user_id, token_hash, job_id, created_at, expires_at)
         SELECT {id}, sha256(n::text::bytea), gen_random_uuid(), now() - interval '2 days',
                now() - interval '2 days'
           FROM generate_series(1, 11000) AS n;",
        id = user.id
    )))
    .execute(&db.pool)
    .await
    .unwrap();

    let pruned = prune_thirty_days(&db).await;
    assert_eq!(pruned, (12_345, 11_000));
    assert_eq!(count(&db, "SELECT count(*) FROM deliveries").await, 10);

    // Each delete finds its rows through an index, not by reading the whole table.
    let mut connection = db.pool.acquire().await.unwrap();
    for (query, index) in [
        (
            "SELECT job_id FROM deliveries WHERE requested_at < now() - interval '30 days' LIMIT 5000",
            "deliveries_requested_at",
        ),
        (
            "SELECT id FROM password_reset_tokens WHERE created_at < now() - interval '1 day' \
             AND (expires_at < now() OR used_at IS NOT NULL OR revoked_at IS NOT NULL) LIMIT 5000",
            "password_reset_tokens_created_at",
        ),
    ] {
        sqlx::raw_sql("SET enable_seqscan = off")
            .execute(&mut *connection)
            .await
            .unwrap();
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {query}")))
            .fetch_all(&mut *connection)
            .await
            .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains(index), "{query}:\n{plan}");
    }
}

#[tokio::test]
async fn processes_starting_together_on_an_older_schema_all_migrate_it() {
    let db = TestDb::new().await;
    // The schema as the previous release left it: the latest migration not applied.
    sqlx::raw_sql(
        "DROP INDEX deliveries_requested_at; DROP INDEX password_reset_tokens_created_at;
         DELETE FROM _sqlx_migrations WHERE version = 20261202000001;",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    // An api and two workers starting at once, as `docker compose up` starts them.
    let starts = (0..3).map(|_| resetmail_shared::db::connect(&db.config));
    for started in futures_util::future::join_all(starts).await {
        started.unwrap_or_else(|error| panic!("a process could not start: {error:#}"));
    }
    let indexes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_indexes
          WHERE indexname IN ('deliveries_requested_at', 'password_reset_tokens_created_at')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(indexes, 2);
}

#[tokio::test]
async fn three_workers_share_a_thousand_requests_and_send_each_email_once() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let total = 1000;
    sqlx::query("INSERT INTO users (email) SELECT 'user' || n || '@example.com' FROM generate_series(1, $1) AS n")
        .bind(total as i32)
        .execute(&db.pool)
        .await
        .unwrap();
    let api = TestApi::start(&db, &broker.config).await;
    let workers: Vec<_> = (0..3)
        .map(|_| TestWorker::start(worker_config(&db.config, &broker.config, &sink, &[])))
        .collect();

    for n in 1..=total {
        let answer = api
            .post_reset(&format!(r#"{{"email":"user{n}@example.com"}}"#))
            .await;
        assert_eq!(answer.json["code"], Value::from(0), "{}", answer.text);
    }
    sink.wait_for(total, std::time::Duration::from_secs(120))
        .await;
    let per_recipient = per_recipient(&sink);
    let twice: Vec<_> = per_recipient
        .iter()
        .filter(|(_, count)| **count > 1)
        .collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}");
    assert_eq!(per_recipient.len(), total);
    for worker in workers {
        worker.stop().await;
    }
}

#[tokio::test]
async fn the_api_counts_requests_by_route_and_code_and_times_its_publishes() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let api = TestApi::start(&db, &broker.config).await;
    api.post_reset(r#"{"email":"jane@example.com"}"#).await;
    api.post_reset(r#"{"email":"not an address"}"#).await;
    let metrics = api
        .client
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap_or_default();
    for expected in [
        r#"resetmail_api_requests_total{route="/api/v4/user/reset",code="0"} 1"#,
        r#"resetmail_api_requests_total{route="/api/v4/user/reset",code="40001"} 1"#,
        "resetmail_api_publish_seconds_bucket",
        "resetmail_api_publish_seconds_count 1",
    ] {
        assert!(text.contains(expected), "no `{expected}` in:\n{text}");
    }
}

#[tokio::test]
async fn the_worker_serves_health_readiness_and_its_job_metrics() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let worker = TestWorker::start(worker_config(&db.config, &broker.config, &sink, &[]));
    db.add_user("jane@example.com", None, None, UserStatus::Active)
        .await;
    let job = job_for("jane@example.com");
    publish(&broker, &job).await;
    decided(&db, job.job_id).await;

    let health = std::sync::Arc::new(resetmail_worker::health::Health::default());
    let (listener, base) = crate::harness::local_listener().await;
    let probe = resetmail_worker::health::Probe {
        health: health.clone(),
        pool: db.pool.clone(),
        metrics: resetmail_shared::metrics::handle(),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(resetmail_worker::health::serve(
        listener,
        probe,
        shutdown.clone(),
    ));
    let client = reqwest::Client::new();
    let get = |path: &str| {
        let request = client.get(format!("{base}{path}"));
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.text().await.unwrap_or_default(),
            )
        }
    };

    assert_eq!(get("/healthz").await.0, 200);
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 503, "not consuming yet: {body}");
    health.set_consuming(true);
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    // The job's last series is written once it is settled, a moment after its record committed.
    let metrics = eventually("the job to be settled", PATIENCE, || async {
        let (status, metrics) = get("/metrics").await;
        assert_eq!(status, 200);
        metrics
            .contains("resetmail_worker_job_seconds_count 1")
            .then_some(metrics)
    })
    .await;
    for expected in [
        r#"resetmail_worker_jobs_total{outcome="sent"} 1"#,
        "resetmail_worker_send_seconds_bucket",
        r#"resetmail_worker_db_wait_seconds_count{kind="claim"} 1"#,
        r#"resetmail_worker_db_wait_seconds_count{kind="record"} 1"#,
        "resetmail_worker_jobs_in_flight 0",
    ] {
        assert!(metrics.contains(expected), "no `{expected}` in:\n{metrics}");
    }
    shutdown.cancel();
    worker.stop().await;
}
