//! The worker on jobs published straight to the queue: decisions, idempotency, languages, escaping,
//! failures of the mail server and of the message itself.

use resetmail_shared::topology::headers;
use resetmail_shared::{
    Job, PasswordResetJob,
    db::{deliveries::Outcome, users::UserStatus},
};
use resetmail_testkit::{
    PATIENCE,
    broker::{TestBroker, header},
    db::TestDb,
    eventually,
    smtp_sink::SmtpSink,
};
use uuid::Uuid;

use crate::harness::{SITE_NAME, TestWorker, decided, job_for, publish, worker_config};

struct Setup {
    db: TestDb,
    broker: TestBroker,
    sink: SmtpSink,
    worker: TestWorker,
}

/// One worker handling one job at a time, so that jobs are handled in the order they were queued.
async fn setup() -> Setup {
    setup_with(&[]).await
}

/// The same, with `extra` worker flags.
async fn setup_with(extra: &[&str]) -> Setup {
    let mut flags = vec!["--concurrency", "1"];
    flags.extend_from_slice(extra);
    start(&flags).await
}

/// One worker handling up to eight jobs at once.
async fn setup_parallel() -> Setup {
    start(&["--concurrency", "8"]).await
}

async fn start(flags: &[&str]) -> Setup {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let worker = TestWorker::start(worker_config(&db.config, &broker.config, &sink, flags));
    Setup {
        db,
        broker,
        sink,
        worker,
    }
}

#[tokio::test]
async fn unknown_banned_and_inactive_accounts_get_no_email_and_their_outcome_is_recorded() {
    let Setup {
        db,
        broker,
        sink,
        worker,
    } = setup().await;
    db.add_user("banned@example.com", None, None, UserStatus::Banned)
        .await;
    db.add_user("inactive@example.com", None, None, UserStatus::Inactive)
        .await;
    db.add_user("marker@example.com", None, None, UserStatus::Active)
        .await;

    let cases = [
        ("nobody@example.com", Outcome::UnknownAccount),
        ("banned@example.com", Outcome::Banned),
        ("INACTIVE@example.com", Outcome::Inactive),
    ];
    let mut jobs = Vec::new();
    for (email, _) in cases {
        let job = job_for(email);
        publish(&broker, &job).await;
        jobs.push(job);
    }
    // Handled in order: once the marker's email is there, the three before it were handled too.
    let marker = job_for("marker@example.com");
    publish(&broker, &marker).await;
    let mails = sink.wait_for(1, PATIENCE).await;

    for (job, (email, outcome)) in jobs.iter().zip(cases) {
        let row = decided(&db, job.job_id).await;
        assert_eq!(row.outcome, outcome, "{email}");
        assert_eq!(row.message_id, None);
    }
    assert_eq!(decided(&db, marker.job_id).await.outcome, Outcome::Sent);
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].rcpt_to, vec!["marker@example.com".to_owned()]);
    assert_eq!(sink.received().len(), 1);
    worker.stop().await;
}

#[tokio::test]
async fn the_same_job_delivered_twice_sends_one_email() {
    let Setup {
        db,
        broker,
        sink,
        worker,
    } = setup().await;
    db.add_user("jane@example.com", None, None, UserStatus::Active)
        .await;
    db.add_user("marker@example.com", None, None, UserStatus::Active)
        .await;

    let job = job_for("jane@example.com");
    publish(&broker, &job).await;
    publish(&broker, &job).await;
    let marker = job_for("marker@example.com");
    publish(&broker, &marker).await;

    let mails = sink.wait_for(2, PATIENCE).await;
    assert_eq!(decided(&db, marker.job_id).await.outcome, Outcome::Sent);
    let recipients: Vec<_> = sink
        .received()
        .iter()
        .map(|mail| mail.rcpt_to.join(","))
        .collect();
    assert_eq!(
        recipients,
        ["jane@example.com", "marker@example.com"],
        "{mails:?}"
    );
    let row = decided(&db, job.job_id).await;
    assert_eq!((row.outcome, row.attempts), (Outcome::Sent, 1));
    let tokens: i64 =
        sqlx::query_scalar("SELECT count(*) FROM password_reset_tokens WHERE job_id = $1")
            .bind(job.job_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(tokens, 1, "the duplicate issued a token");
    worker.stop().await;
}

#[tokio::test]
async fn a_zh_cn_account_gets_chinese_and_a_script_nick_is_escaped_in_html_only() {
    let Setup {
        db,
        broker,
        sink,
        worker,
    } = setup().await;
    let nick = "<script>alert(1)</script>";
    db.add_user(
        "li@example.com",
        Some(nick),
        Some("zh-CN"),
        UserStatus::Active,
    )
    .await;
    db.add_user("tw@example.com", None, Some("zh_TW"), UserStatus::Active)
        .await;
    db.add_user(
        "en@example.com",
        Some(nick),
        Some("nl-NL"),
        UserStatus::Active,
    )
    .await;

    for email in ["li@example.com", "tw@example.com", "en@example.com"] {
        publish(&broker, &job_for(email)).await;
    }
    let mails: Vec<_> = sink
        .wait_for(3, PATIENCE)
        .await
        .iter()
        .map(|mail| mail.parsed())
        .collect();

    let chinese = &mails[0];
    assert_eq!(chinese.subject, format!("[{SITE_NAME}] 重置密码"));
    assert!(
        chinese
            .html
            .contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        chinese.html
    );
    assert!(
        !chinese.html.contains("<script>"),
        "the nick reached the HTML unescaped"
    );
    assert!(
        chinese.text.contains(nick),
        "the text part must show the nick as typed: {}",
        chinese.text
    );
    assert!(chinese.text.contains("1 小时"), "{}", chinese.text);

    assert_eq!(
        mails[1].subject,
        format!("[{SITE_NAME}] 重設密碼"),
        "zh_TW gets Traditional Chinese"
    );
    assert_eq!(
        mails[2].subject,
        format!("[{SITE_NAME}] Reset your password"),
        "nl-NL (not shipped) falls back to the default"
    );
    assert!(mails[2].html.contains("&lt;script&gt;") && !mails[2].html.contains("<script>"));
    worker.stop().await;
}

#[tokio::test]
async fn a_new_email_revokes_the_accounts_older_unused_token() {
    let Setup {
        db,
        broker,
        sink,
        worker,
    } = setup_with(&["--account-cooldown", "0s"]).await;
    db.add_user("jane@example.com", None, None, UserStatus::Active)
        .await;
    let (first, second) = (job_for("jane@example.com"), job_for("jane@example.com"));
    publish(&broker, &first).await;
    publish(&broker, &second).await;
    sink.wait_for(2, PATIENCE).await;
    decided(&db, first.job_id).await;
    decided(&db, second.job_id).await;

    let live: Vec<(Uuid, bool)> =
        sqlx::query_as("SELECT job_id, revoked_at IS NULL FROM password_reset_tokens ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(live, vec![(first.job_id, false), (second.job_id, true)]);
    worker.stop().await;
}

#[tokio::test]
async fn a_job_older_than_its_maximum_age_is_recorded_as_expired_and_not_sent() {
    let Setup {
        db,
        broker,
        sink,
        worker,
    } = setup().await;
    db.add_user("jane@example.com", None, None, UserStatus::Active)
        .await;
    let mut stale = job_for("jane@example.com");
    stale.requested_at -= time::Duration::hours(2);
    publish(&broker, &stale).await;
    let fresh = job_for("jane@example.com");
    publish(&broker, &fresh).await;

    sink.wait_for(1, PATIENCE).await;
    assert_eq!(decided(&db, stale.job_id).await.outcome, Outcome::Expired);
    assert_eq!(decided(&db, fresh.job_id).await.outcome, Outcome::Sent);
    assert_eq!(sink.received().len(), 1);
    worker.stop().await;
}

#[tokio::test]
async fn a_transient_smtp_failure_is_retried_until_the_email_goes_out_once() {
    let Setup {
        db,
        broker,
        sink,
        worker,
    } = setup().await;
    db.add_user("jane@example.com", None, None, UserStatus::Active)
        .await;
    sink.fail_data(451, "4.3.0 try again later", 3);
    let job = job_for("jane@example.com");
    publish(&broker, &job).await;

    let row = decided(&db, job.job_id).await;
    assert_eq!((row.outcome, row.attempts), (Outcome::Sent, 4));
    assert_eq!(sink.received().len(), 1);
    assert_eq!(sink.attempts(), 4);
    let live: i64 =
        sqlx::query_scalar("SELECT count(*) FROM password_reset_tokens WHERE revoked_at IS NULL")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(live, 1, "tokens of the failed attempts must be revoked");
    worker.stop().await;
}

#[tokio::test]
async fn a_permanent_smtp_failure_goes_to_the_dead_letters_without_retry() {
    let Setup {
        db,
        broker,
        sink,
        worker,
    } = setup().await;
    db.add_user("gone@example.com", None, None, UserStatus::Active)
        .await;
    // The server names the recipient, as Postfix does; the address is masked wherever it is kept.
    sink.reject_recipient(
        "gone@example.com",
        550,
        "5.1.1 <gone@example.com>: Recipient address rejected",
    );
    let job = job_for("gone@example.com");
    publish(&broker, &job).await;

    let row = decided(&db, job.job_id).await;
    assert_eq!((row.outcome, row.attempts), (Outcome::Failed, 1));
    let error = row.last_error.unwrap_or_default();
    assert!(
        error.contains("550") && error.contains("<g***@example.com>: Recipient address rejected"),
        "{error}"
    );
    assert!(!error.contains("gone@example.com"), "{error}");
    broker
        .wait_for_count(&broker.topology.dead_letter_queue(), 1, PATIENCE)
        .await;
    let dead = broker
        .take(&broker.topology.dead_letter_queue())
        .await
        .unwrap_or_else(|| panic!("no dead letter"));
    assert_eq!(
        Job::decode(&dead.delivery.data)
            .ok()
            .map(|job| job.job_id()),
        Some(job.job_id)
    );
    assert_eq!(
        header(&dead, headers::ERROR_CLASS).as_deref(),
        Some("permanent")
    );
    assert_eq!(header(&dead, headers::ATTEMPTS).as_deref(), Some("1"));
    let error = header(&dead, headers::LAST_ERROR).unwrap_or_default();
    assert!(
        error.contains("550") && error.contains("<g***@example.com>"),
        "{error}"
    );
    assert!(!error.contains("gone@example.com"), "{error}");
    assert_eq!(
        header(&dead, headers::ORIGINAL_ROUTING_KEY),
        Some(broker.topology.work_queue())
    );
    assert!(
        header(&dead, headers::FIRST_ATTEMPT_AT).is_some()
            && header(&dead, headers::LAST_ATTEMPT_AT).is_some()
    );
    assert_eq!(
        sink.attempts(),
        0,
        "a refused recipient must not be retried"
    );
    assert!(sink.received().is_empty());
    worker.stop().await;
}

#[tokio::test]
async fn a_malformed_message_goes_to_the_dead_letters_and_the_worker_keeps_going() {
    let Setup {
        db,
        broker,
        sink,
        worker,
    } = setup().await;
    db.add_user("jane@example.com", None, None, UserStatus::Active)
        .await;
    broker
        .publish_raw(
            b"{\"v\":1,\"type\":\"password_reset\",\"email\":42}",
            Some("broken-1"),
        )
        .await;
    broker.publish_raw(b"\xff\xfe not even text", None).await;
    broker
        .publish_raw(
            br#"{"v":99,"type":"password_reset"}"#,
            Some("from-the-future"),
        )
        .await;
    let job = job_for("jane@example.com");
    publish(&broker, &job).await;

    sink.wait_for(1, PATIENCE).await;
    assert_eq!(decided(&db, job.job_id).await.outcome, Outcome::Sent);
    broker
        .wait_for_count(&broker.topology.dead_letter_queue(), 3, PATIENCE)
        .await;
    for _ in 0..3 {
        let dead = broker
            .take(&broker.topology.dead_letter_queue())
            .await
            .unwrap_or_else(|| panic!("no dead letter"));
        assert_eq!(
            header(&dead, headers::ERROR_CLASS).as_deref(),
            Some("malformed")
        );
    }
    worker.stop().await;
}

#[tokio::test]
async fn transient_failures_past_the_last_retry_step_end_in_the_dead_letters() {
    let db = TestDb::new().await;
    let broker = TestBroker::with_retry_delays("50ms,100ms,150ms").await;
    let sink = SmtpSink::start().await;
    let worker = TestWorker::start(worker_config(&db.config, &broker.config, &sink, &[]));
    db.add_user("jane@example.com", None, None, UserStatus::Active)
        .await;
    sink.fail_data(
        452,
        "4.2.2 <jane@example.com>: mailbox full, try again later",
        100,
    );
    let job = job_for("jane@example.com");
    publish(&broker, &job).await;

    let row = decided(&db, job.job_id).await;
    assert_eq!(
        (row.outcome, row.attempts),
        (Outcome::Failed, 4),
        "one attempt and three retries"
    );
    broker
        .wait_for_count(&broker.topology.dead_letter_queue(), 1, PATIENCE)
        .await;
    let dead = broker
        .take(&broker.topology.dead_letter_queue())
        .await
        .unwrap_or_else(|| panic!("no dead letter"));
    assert_eq!(
        header(&dead, headers::ERROR_CLASS).as_deref(),
        Some("exhausted")
    );
    assert_eq!(header(&dead, headers::ATTEMPTS).as_deref(), Some("4"));
    let error = header(&dead, headers::LAST_ERROR).unwrap_or_default();
    assert!(
        error.contains("452") && error.contains("<j***@example.com>"),
        "{error}"
    );
    assert!(!error.contains("jane@example.com"), "{error}");
    let kept = row.last_error.unwrap_or_default();
    assert!(
        kept.contains("<j***@example.com>") && !kept.contains("jane@example.com"),
        "{kept}"
    );
    assert_eq!(sink.attempts(), 4);
    for step in 0..3 {
        let (queue, _) = broker
            .topology
            .retry_queue(step)
            .unwrap_or_else(|| panic!("no step {step}"));
        assert_eq!(broker.count(&queue).await, 0, "{queue} still holds a copy");
    }
    worker.stop().await;
}

#[tokio::test]
async fn jobs_queued_while_the_mail_server_is_down_are_all_delivered_once_it_is_back() {
    let db = TestDb::new().await;
    // Enough steps to outlast the outage below.
    let broker = TestBroker::with_retry_delays(&["200ms"; 30].join(",")).await;
    let sink = SmtpSink::start().await;
    let worker = TestWorker::start(worker_config(&db.config, &broker.config, &sink, &[]));
    sink.set_down(true);
    let mut jobs = Vec::new();
    for n in 0..5 {
        let email = format!("user{n}@example.com");
        db.add_user(&email, None, None, UserStatus::Active).await;
        let job = job_for(&email);
        publish(&broker, &job).await;
        jobs.push(job);
    }
    // Every job has failed at least once while the server was down.
    eventually("every job to have failed once", PATIENCE, || async {
        let failed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE last_error IS NOT NULL")
                .fetch_one(&db.pool)
                .await
                .ok()?;
        (failed == 5).then_some(())
    })
    .await;
    sink.set_down(false);

    sink.wait_for(5, PATIENCE).await;
    for job in &jobs {
        let row = decided(&db, job.job_id).await;
        assert_eq!(row.outcome, Outcome::Sent);
        assert!(row.attempts >= 2, "{row:?}");
    }
    let mut recipients: Vec<String> = sink
        .received()
        .iter()
        .map(|mail| mail.rcpt_to.join(","))
        .collect();
    recipients.sort();
    assert_eq!(
        recipients,
        (0..5)
            .map(|n| format!("user{n}@example.com"))
            .collect::<Vec<_>>()
    );
    worker.stop().await;
}

#[tokio::test]
async fn an_account_gets_one_email_per_cooldown_however_many_jobs_arrive() {
    // Several jobs in parallel: the account's row lock makes them see each other's sends.
    let Setup {
        db,
        broker,
        sink,
        worker,
    } = setup_parallel().await;
    db.add_user("jane@example.com", None, None, UserStatus::Active)
        .await;
    let jobs = [
        job_for("jane@example.com"),
        job_for("JANE@example.com"),
        job_for("jane@example.com"),
    ];
    for job in &jobs {
        publish(&broker, job).await;
    }
    let mut outcomes = Vec::new();
    for job in &jobs {
        outcomes.push(decided(&db, job.job_id).await.outcome);
    }
    outcomes.sort();
    assert_eq!(
        outcomes,
        [Outcome::Sent, Outcome::Throttled, Outcome::Throttled]
    );
    assert_eq!(sink.received().len(), 1);
    worker.stop().await;
}

/// A transaction of the test's own that holds the row of the account with `email` until it ends.
async fn hold_account_row(db: &TestDb, email: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE email = $1 FOR UPDATE")
        .bind(email)
        .execute(&mut *holder)
        .await
        .unwrap();
    holder
}

/// Jobs sent past one whose claim waits on its account's row: adds the accounts `others` and
/// `held`; holds `held`'s row (another session's long transaction, say: the claim of its job waits
/// for it, and the batch that claim is in with it); publishes its job and waits until the claim
/// waits on the row; then publishes a job for each of `others` and waits until each is sent.
/// Answers the holder, the held account's job and the others'.
async fn jobs_past_a_held_account(
    db: &TestDb,
    broker: &TestBroker,
    held: &str,
    others: &[String],
) -> (
    sqlx::Transaction<'static, sqlx::Postgres>,
    PasswordResetJob,
    Vec<PasswordResetJob>,
) {
    for address in others.iter().map(String::as_str).chain([held]) {
        db.add_user(address, None, None, UserStatus::Active).await;
    }
    let holder = hold_account_row(db, held).await;
    let held_job = job_for(held);
    publish(broker, &held_job).await;
    eventually(
        "the held account's claim to wait for its row",
        PATIENCE,
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            (waiting > 0).then_some(())
        },
    )
    .await;
    let jobs: Vec<_> = others.iter().map(|address| job_for(address)).collect();
    for job in &jobs {
        publish(broker, job).await;
    }
    for job in &jobs {
        assert_eq!(decided(db, job.job_id).await.outcome, Outcome::Sent);
    }
    (holder, held_job, jobs)
}

#[tokio::test]
async fn a_claim_waiting_on_a_locked_account_holds_up_no_other_job() {
    let Setup {
        db,
        broker,
        sink,
        worker,
    } = setup_parallel().await;
    let others: Vec<String> = (0..5).map(|i| format!("user{i}@example.com")).collect();
    let (holder, stuck, jobs) =
        jobs_past_a_held_account(&db, &broker, "stuck@example.com", &others).await;
    assert_eq!(sink.received().len(), jobs.len(), "the row is still held");

    holder.rollback().await.unwrap();
    assert_eq!(decided(&db, stuck.job_id).await.outcome, Outcome::Sent);
    assert_eq!(sink.received().len(), jobs.len() + 1);
    worker.stop().await;
}

#[tokio::test]
async fn a_claim_that_outlasts_its_job_s_patience_gives_its_lease_back() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let mut config = worker_config(&db.config, &broker.config, &sink, &["--concurrency", "8"]);
    // A lease of 2 × 60 s + 5 s: a job whose next delivery had to wait for it would not be sent
    // within the test's patience.
    config.smtp_timeout = std::time::Duration::from_secs(60);
    let worker = TestWorker::start(config);
    db.add_user("slow@example.com", None, None, UserStatus::Active)
        .await;
    // The account's row held by another session for longer than a job waits for its claim: the
    // job is put back and the worker pauses, while its claim still waits in PostgreSQL.
    let holder = hold_account_row(&db, "slow@example.com").await;
    let job = job_for("slow@example.com");
    publish(&broker, &job).await;
    let metrics = format!("http://{}/metrics", worker.addr);
    eventually("the job to give up on its claim", PATIENCE, || async {
        let text = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
        text.contains(r#"resetmail_worker_jobs_total{outcome="paused"} 1"#)
            .then_some(())
    })
    .await;

    // The claim goes through now, with no one to answer: its lease is given back, and the job's
    // next delivery claims it at once.
    holder.rollback().await.unwrap();
    assert_eq!(decided(&db, job.job_id).await.outcome, Outcome::Sent);
    assert_eq!(sink.received().len(), 1);
    worker.stop().await;
}

/// The acks of jobs that finish together go as one frame, `multiple`, which acks every delivery of
/// the channel up to its tag: a job taken before them and still running must stay out of it. Had
/// it been acked with them, the broker would refuse its later requeue (an unknown delivery tag,
/// closing the channel) and the job would be lost, never sent.
#[tokio::test]
async fn the_acks_of_later_jobs_never_cover_a_job_still_running() {
    let Setup {
        db,
        broker,
        sink,
        worker,
    } = setup_parallel().await;
    let others: Vec<String> = (0..6).map(|i| format!("later{i}@example.com")).collect();
    // The first job's claim waits on its account's row, past its patience: it is requeued, and
    // sent on its next delivery once the row is free.
    let (holder, first, jobs) =
        jobs_past_a_held_account(&db, &broker, "first@example.com", &others).await;
    let metrics = format!("http://{}/metrics", worker.addr);
    eventually(
        "the first job to give up on its claim",
        PATIENCE,
        || async {
            let text = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
            text.contains(r#"resetmail_worker_jobs_total{outcome="paused"} 1"#)
                .then_some(())
        },
    )
    .await;

    holder.rollback().await.unwrap();
    assert_eq!(decided(&db, first.job_id).await.outcome, Outcome::Sent);
    assert_eq!(sink.received().len(), jobs.len() + 1);
    worker.stop().await;
    assert_eq!(
        broker.count(&broker.topology.work_queue()).await,
        0,
        "every job acked once the worker stopped"
    );
}

#[tokio::test]
async fn an_account_gets_at_most_its_daily_maximum() {
    let Setup {
        db,
        broker,
        sink,
        worker,
    } = setup_with(&["--account-cooldown", "0s", "--account-daily-max", "2"]).await;
    db.add_user("jane@example.com", None, None, UserStatus::Active)
        .await;
    let jobs: Vec<_> = (0..4).map(|_| job_for("jane@example.com")).collect();
    for job in &jobs {
        publish(&broker, job).await;
    }
    let mut outcomes = Vec::new();
    for job in &jobs {
        outcomes.push(decided(&db, job.job_id).await.outcome);
    }
    assert_eq!(
        outcomes,
        [
            Outcome::Sent,
            Outcome::Sent,
            Outcome::Throttled,
            Outcome::Throttled
        ]
    );
    assert_eq!(sink.received().len(), 2);
    worker.stop().await;
}

#[tokio::test]
async fn with_notices_on_an_address_with_no_account_is_told_so_once_per_cooldown() {
    let Setup {
        db,
        broker,
        sink,
        worker,
    } = setup_with(&["--notify-unknown-addresses"]).await;
    db.add_user("jane@example.com", None, None, UserStatus::Active)
        .await;
    let nobody = job_for("nobody@example.com");
    // The same address in another case, within the cooldown: no second notice.
    let again = job_for("NOBODY@example.com");
    let jane = job_for("jane@example.com");
    for job in [&nobody, &again, &jane] {
        publish(&broker, job).await;
    }

    let noticed = decided(&db, nobody.job_id).await;
    assert_eq!(noticed.outcome, Outcome::UnknownAccount);
    assert_eq!(noticed.user_id, None);
    assert!(noticed.sent_at.is_some() && noticed.message_id.is_some());
    assert_eq!(decided(&db, again.job_id).await.outcome, Outcome::Throttled);
    assert_eq!(decided(&db, jane.job_id).await.outcome, Outcome::Sent);

    let mails = sink.received();
    assert_eq!(mails.len(), 2);
    let notice = mails[0].parsed();
    assert_eq!(mails[0].rcpt_to, vec!["nobody@example.com".to_owned()]);
    assert!(notice.subject.contains(SITE_NAME), "{}", notice.subject);
    for part in [&notice.text, &notice.html] {
        assert!(part.contains("nobody@example.com"), "{part}");
        assert!(
            !part.contains("/session/reset?id="),
            "a notice carries no link: {part}"
        );
    }
    assert_eq!(
        notice.message_id,
        noticed
            .message_id
            .unwrap_or_default()
            .trim_matches(['<', '>'])
    );
    assert_eq!(mails[1].rcpt_to, vec!["jane@example.com".to_owned()]);
    let tokens: i64 = sqlx::query_scalar("SELECT count(*) FROM password_reset_tokens")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(tokens, 1, "only the account's email has a token");
    worker.stop().await;
}
