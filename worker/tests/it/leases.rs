//! Jobs claimed under a lease and sent with nothing held in the database: a second delivery of a
//! job waits while the first holds its lease; a job whose worker died mid-send is taken over once
//! the lease runs out and is sent once; and a database that allows the worker fewer connections
//! than it would take costs nothing but speed.

use resetmail_shared::db::deliveries::{self, Outcome};
use resetmail_testkit::{
    PATIENCE, broker::TestBroker, db::TestDb, process::Process, process::http_get,
    smtp_sink::SmtpSink,
};

use crate::binary::{BINARY, accounts, environment, http_addr, queue_jobs};

fn waiting_for_lease(line: &str) -> bool {
    line.contains("holds its lease; waiting")
}

#[tokio::test]
async fn a_second_delivery_of_a_job_being_sent_waits_for_it_and_sends_nothing() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let addresses = accounts(&db, 1).await;
    let mut worker = Process::start(BINARY, &[], &environment(&db.config, &broker, &sink));

    sink.hold();
    let job = queue_jobs(&broker, &addresses).await[0];
    sink.wait_held(1, PATIENCE).await;
    // The same job again, as a broker redelivers it or a publisher repeats it.
    let body = resetmail_shared::Job::PasswordReset(resetmail_shared::PasswordResetJob {
        job_id: job,
        email: resetmail_shared::EmailAddress::parse(&addresses[0]).unwrap(),
        correlation_id: uuid::Uuid::new_v4(),
        requested_at: time::OffsetDateTime::now_utc(),
    })
    .encode()
    .unwrap();
    broker.publish_raw(&body, Some(&job.to_string())).await;
    worker
        .wait_for_line(
            "saying the second delivery waits",
            PATIENCE,
            waiting_for_lease,
        )
        .await;

    sink.release();
    worker
        .wait_for_line("acknowledging the second delivery", PATIENCE, |line| {
            line.contains("job already handled")
        })
        .await;
    assert_eq!(sink.received().len(), 1);
    assert_eq!(
        sink.attempts(),
        1,
        "the second delivery reached the mail server"
    );
    let row = deliveries::find(&db.pool, job)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no delivery row"));
    assert_eq!((row.outcome, row.attempts), (Outcome::Sent, 1));
    worker.stop_cleanly(PATIENCE).await;
}

#[tokio::test]
async fn a_job_whose_worker_died_mid_send_is_taken_over_when_its_lease_runs_out() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let addresses = accounts(&db, 1).await;
    let mut env = environment(&db.config, &broker, &sink);
    // The lease lasts two send time limits and 5 s: 7 s here.
    env.push(("RESETMAIL_SMTP_TIMEOUT", "1s".into()));

    sink.hold();
    let mut first = Process::start(BINARY, &[], &env);
    let job = queue_jobs(&broker, &addresses).await[0];
    sink.wait_held(1, PATIENCE).await;
    first.signal("KILL");
    first.wait_exit(PATIENCE).await;
    // The relay never accepted that send.
    sink.drop_held();

    let mut second = Process::start(BINARY, &[], &env);
    second
        .wait_for_line(
            "saying the lease is still the dead worker's",
            PATIENCE,
            waiting_for_lease,
        )
        .await;
    let mails = sink.wait_for(1, PATIENCE).await;
    assert_eq!(mails[0].rcpt_to, vec![addresses[0].clone()]);
    second
        .wait_for_line("recording the email", PATIENCE, |line| {
            line.contains("reset email sent")
        })
        .await;
    let row = deliveries::find(&db.pool, job)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no delivery row"));
    assert_eq!((row.outcome, row.attempts), (Outcome::Sent, 2));
    let live_tokens: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM password_reset_tokens WHERE used_at IS NULL AND revoked_at IS NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(live_tokens, 1, "only the email that left has a token");
    second.stop_cleanly(PATIENCE).await;
    assert_eq!(sink.received().len(), 1);
}

#[tokio::test]
async fn a_database_allowing_fewer_connections_than_the_worker_wants_still_gets_every_job_sent() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let addresses = accounts(&db, 40).await;
    // The worker would take 10 (RESETMAIL_DB_POOL_SIZE's default); its role may hold 3.
    let role = db.role_with_connection_limit(3).await;
    let mut env = environment(&role.config, &broker, &sink);
    env.push(("RESETMAIL_CONCURRENCY", "500".into()));
    env.push(("RESETMAIL_SHUTDOWN_TIMEOUT", "5s".into()));
    let mut worker = Process::start(BINARY, &[], &env);
    let addr = http_addr(&worker).await;

    let jobs = queue_jobs(&broker, &addresses).await;
    let mails = sink.wait_for(jobs.len(), PATIENCE).await;
    let mut recipients: Vec<String> = mails.iter().flat_map(|mail| mail.rcpt_to.clone()).collect();
    recipients.sort();
    let mut expected = addresses.clone();
    expected.sort();
    assert_eq!(recipients, expected, "each account once");
    for job in &jobs {
        worker
            .wait_for_line("recording each job", PATIENCE, |line| {
                line.contains(&job.to_string()) && line.contains("reset email sent")
            })
            .await;
    }
    let (status, _) = http_get(&addr, "/healthz", PATIENCE).await;
    assert_eq!(status, 200);
    let (_, metrics) = http_get(&addr, "/metrics", PATIENCE).await;
    let lanes: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("resetmail_worker_db_connections "))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no lane gauge in:\n{metrics}"));
    assert!(
        (1.0..=3.0).contains(&lanes),
        "{lanes} lanes connected under a limit of 3"
    );

    let lines = worker.stop_cleanly(PATIENCE).await;
    let refusals = lines
        .iter()
        .filter(|line| line.contains("the database refused a connection"))
        .count();
    assert_eq!(
        refusals,
        1,
        "the refusal is logged once a minute:\n{}",
        lines.join("\n")
    );
    assert_eq!(sink.received().len(), jobs.len());
}

#[tokio::test]
async fn jobs_above_the_smtp_connection_cap_wait_for_a_connection() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let addresses = accounts(&db, 20).await;
    let mut env = environment(&db.config, &broker, &sink);
    env.push(("RESETMAIL_SMTP_CONNECTIONS", "3".into()));
    let mut worker = Process::start(BINARY, &[], &env);
    let addr = http_addr(&worker).await;

    sink.hold();
    let jobs = queue_jobs(&broker, &addresses).await;
    // Every job taken at once (the concurrency is 100), three of them at the mail server.
    resetmail_testkit::eventually("every job in flight", PATIENCE, || async {
        let (_, metrics) = http_get(&addr, "/metrics", PATIENCE).await;
        metrics
            .lines()
            .any(|line| line == "resetmail_worker_jobs_in_flight 20")
            .then_some(())
    })
    .await;
    sink.wait_held(3, PATIENCE).await;
    sink.release();
    sink.wait_for(jobs.len(), PATIENCE).await;
    assert_eq!(sink.peak_connections(), 3);
    worker.stop_cleanly(PATIENCE).await;
}
