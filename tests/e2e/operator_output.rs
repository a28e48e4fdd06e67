//! What operator commands print: addresses masked unless asked for (even those a mail server's
//! reply quotes, even in dead letters written before masking), and times in one format.

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString},
};
use resetmail_shared::{amqp, db::users::UserStatus, topology::headers};
use resetmail_testkit::{
    PATIENCE,
    broker::{TestBroker, header},
    db::TestDb,
    smtp_sink::SmtpSink,
};
use resetmail_worker::commands::{DlqCommand, StatusArgs};
use serde_json::Value;
use time::{OffsetDateTime, format_description::well_known::Rfc3339, macros::datetime};
use uuid::Uuid;

use crate::{
    harness::{TestWorker, decided, job_for, publish, worker_config},
    operator::{dlq, status, status_args},
};

/// Fails unless `text` shows each address of `addresses` masked and none in clear.
fn assert_masked(what: &str, text: &str, addresses: &[&str]) {
    for address in addresses {
        assert!(!text.contains(address), "{what} shows {address}:\n{text}");
        let masked = resetmail_shared::email::mask(address);
        assert!(text.contains(&masked), "{what} lacks {masked}:\n{text}");
    }
}

/// Fails unless `text` shows each address of `addresses` in clear.
fn assert_clear(what: &str, text: &str, addresses: &[&str]) {
    for address in addresses {
        assert!(text.contains(address), "{what} lacks {address}:\n{text}");
    }
}

#[tokio::test]
async fn addresses_named_by_the_mail_server_are_masked_in_every_operator_output_unless_asked() {
    let db = TestDb::new().await;
    let broker = TestBroker::with_retry_delays("50ms").await;
    let sink = SmtpSink::start().await;
    let config = worker_config(&db.config, &broker.config, &sink, &["--concurrency", "1"]);
    let worker = TestWorker::start(config.clone());
    let (bob, carol) = ("bob@example.com", "carol@example.com");
    for email in [bob, carol] {
        db.add_user(email, None, None, UserStatus::Active).await;
    }
    // As Postfix words them: a 5xx at RCPT for bob, 4xx at DATA for carol until the retries run out.
    sink.reject_recipient(
        bob,
        550,
        "5.1.1 <bob@example.com>: Recipient address rejected",
    );
    sink.fail_data(452, "4.2.2 <carol@example.com>: mailbox full", 2);
    let (bob_job, carol_job) = (job_for(bob), job_for(carol));
    publish(&broker, &bob_job).await;
    publish(&broker, &carol_job).await;
    let dead = broker.topology.dead_letter_queue();
    broker.wait_for_count(&dead, 2, PATIENCE).await;
    worker.stop().await;
    // dave's failure was recorded before addresses were masked: in clear, in the row and the letter.
    let dave = "dave@example.com";
    let dave_job = job_for(dave);
    let old_error = "permanent error (550): 5.1.1 <dave@example.com>: Recipient address rejected";
    sqlx::query(
        "INSERT INTO deliveries (job_id, correlation_id, email, requested_at, outcome, attempts, last_error)
         VALUES ($1, $2, $3, now(), 'failed', 1, $4)",
    )
    .bind(dave_job.job_id)
    .bind(dave_job.correlation_id)
    .bind(dave)
    .bind(old_error)
    .execute(&db.pool)
    .await
    .unwrap();
    let mut table = FieldTable::default();
    for (key, value) in [
        (headers::ERROR_CLASS, "permanent"),
        (headers::LAST_ERROR, old_error),
    ] {
        table.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    }
    let job = resetmail_shared::Job::PasswordReset(dave_job.clone());
    amqp::publish_confirmed(
        &broker.channel,
        "",
        &dead,
        &job.encode().unwrap(),
        amqp::job_properties(&job).with_headers(table),
    )
    .await
    .unwrap();
    broker.wait_for_count(&dead, 3, PATIENCE).await;

    // The delivery table.
    for (job, address) in [(&bob_job, bob), (&carol_job, carol)] {
        let row = decided(&db, job.job_id).await;
        let error = row.last_error.unwrap_or_default();
        assert_masked("deliveries.last_error", &error, &[address]);
    }

    // dlq list, as a table and as JSON.
    let list = |json, show_addresses| DlqCommand::List {
        limit: 50,
        json,
        show_addresses,
    };
    let table = dlq(&config, list(false, false)).await;
    assert!(table.contains("3 shown"), "{table}");
    assert_masked("dlq list", &table, &[bob, carol, dave]);
    assert!(
        table.contains("<b***@example.com>"),
        "no last error:\n{table}"
    );
    broker.wait_for_count(&dead, 3, PATIENCE).await;
    let listed = dlq(&config, list(true, false)).await;
    assert_masked("dlq list --json", &listed, &[bob, carol, dave]);
    let listed: Value = serde_json::from_str(&listed).unwrap_or_default();
    for letter in listed.as_array().into_iter().flatten() {
        let body: Value =
            serde_json::from_str(letter["body"].as_str().unwrap_or_default()).unwrap_or_default();
        assert_eq!(body["email"], letter["email"], "{letter}");
        assert_eq!(body["job_id"], letter["job_id"], "{letter}");
    }
    broker.wait_for_count(&dead, 3, PATIENCE).await;
    let table = dlq(&config, list(false, true)).await;
    assert_clear("dlq list --show-addresses", &table, &[bob, carol, dave]);
    broker.wait_for_count(&dead, 3, PATIENCE).await;
    let listed = dlq(&config, list(true, true)).await;
    assert_clear(
        "dlq list --json --show-addresses",
        &listed,
        &[bob, carol, dave],
    );

    // dlq show.
    for (job, address) in [(&bob_job, bob), (&carol_job, carol), (&dave_job, dave)] {
        broker.wait_for_count(&dead, 3, PATIENCE).await;
        let show = |show_addresses| DlqCommand::Show {
            job_id: job.job_id,
            show_addresses,
        };
        let shown = dlq(&config, show(false)).await;
        assert_masked("dlq show", &shown, &[address]);
        broker.wait_for_count(&dead, 3, PATIENCE).await;
        assert_clear(
            "dlq show --show-addresses",
            &dlq(&config, show(true)).await,
            &[address],
        );
    }

    // status, as a table and as JSON, even asked by address.
    for (json, address) in [(false, bob), (true, bob), (false, dave), (true, dave)] {
        let args = |show_addresses| StatusArgs {
            email: Some(address.into()),
            json,
            show_addresses,
            ..status_args()
        };
        let shown = status(&config, args(false)).await;
        assert_masked("status", &shown, &[address]);
        assert!(shown.contains("550"), "no last error:\n{shown}");
        assert_clear(
            "status --show-addresses",
            &status(&config, args(true)).await,
            &[address],
        );
    }

    // The headers of the dead letters this worker wrote.
    broker.wait_for_count(&dead, 3, PATIENCE).await;
    for _ in 0..3 {
        let letter = broker
            .take(&dead)
            .await
            .unwrap_or_else(|| panic!("no dead letter"));
        let error = header(&letter, headers::LAST_ERROR).unwrap_or_default();
        if error != old_error {
            assert!(error.contains("***@example.com>"), "{error}");
            assert!(!error.contains(bob) && !error.contains(carol), "{error}");
        }
    }
}

#[tokio::test]
async fn operator_tables_and_json_print_times_in_one_readable_utc_format() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let config = worker_config(&db.config, &broker.config, &sink, &[]);
    // A single-digit hour, microseconds, and (in the dead letter) an offset other than UTC.
    let job_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO deliveries (job_id, correlation_id, email, requested_at, sent_at, outcome, message_id)
         VALUES ($1, gen_random_uuid(), 'jane@example.com', '2026-11-30 04:15:39.503817+00',
                 '2026-11-30 04:15:40.25+00', 'sent', '<m@cloud.example.com>')",
    )
    .bind(job_id)
    .execute(&db.pool)
    .await
    .unwrap();
    let mut table = FieldTable::default();
    for (key, value) in [
        (
            headers::FIRST_ATTEMPT_AT,
            "2026-11-30T05:15:39.503817+01:00",
        ),
        (headers::LAST_ATTEMPT_AT, "2026-11-30T04:15:41Z"),
    ] {
        table.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    }
    amqp::publish_confirmed(
        &broker.channel,
        "",
        &broker.topology.dead_letter_queue(),
        br#"{"v":1}"#,
        BasicProperties::default()
            .with_message_id(job_id.to_string().into())
            .with_headers(table),
    )
    .await
    .unwrap();

    // Tables: `2026-11-30 04:15:39Z` in UTC, each time in its column under its heading.
    let aligned = |text: &str, heading: &str, time: &str| {
        let mut lines = text.lines();
        let head = lines.next().unwrap_or_default();
        let row = lines
            .find(|line| line.contains(&job_id.to_string()))
            .unwrap_or_else(|| panic!("no row for the job:\n{text}"));
        assert_eq!(
            row.find(&format!("  {time}  ")).map(|at| at + 2),
            head.find(heading),
            "`{time}` is not under {heading}:\n{text}"
        );
    };
    let shown = status(
        &config,
        StatusArgs {
            job: Some(job_id),
            ..status_args()
        },
    )
    .await;
    aligned(&shown, "REQUESTED", "2026-11-30 04:15:39Z");
    aligned(&shown, "SENT", "2026-11-30 04:15:40Z");
    let listed = dlq(
        &config,
        DlqCommand::List {
            limit: 50,
            json: false,
            show_addresses: false,
        },
    )
    .await;
    aligned(&listed, "FIRST ATTEMPT", "2026-11-30 04:15:39Z");
    aligned(&listed, "LAST ATTEMPT", "2026-11-30 04:15:41Z");

    // JSON: RFC 3339.
    let parse = |value: &Value| {
        OffsetDateTime::parse(value.as_str().unwrap_or_default(), &Rfc3339)
            .unwrap_or_else(|error| panic!("{value} is not RFC 3339: {error}"))
    };
    let rows: Value = serde_json::from_str(
        &status(
            &config,
            StatusArgs {
                job: Some(job_id),
                json: true,
                ..status_args()
            },
        )
        .await,
    )
    .unwrap_or_default();
    assert_eq!(
        parse(&rows[0]["requested_at"]),
        datetime!(2026-11-30 04:15:39.503817 UTC)
    );
    assert_eq!(
        parse(&rows[0]["sent_at"]),
        datetime!(2026-11-30 04:15:40.25 UTC)
    );
    broker
        .wait_for_count(&broker.topology.dead_letter_queue(), 1, PATIENCE)
        .await;
    let letters: Value = serde_json::from_str(
        &dlq(
            &config,
            DlqCommand::List {
                limit: 50,
                json: true,
                show_addresses: false,
            },
        )
        .await,
    )
    .unwrap_or_default();
    assert_eq!(
        parse(&letters[0]["first_attempt_at"]),
        datetime!(2026-11-30 04:15:39.503817 UTC)
    );
    assert_eq!(
        parse(&letters[0]["last_attempt_at"]),
        datetime!(2026-11-30 04:15:41 UTC)
    );
}
