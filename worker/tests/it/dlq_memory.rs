//! The dead-letter commands on a long queue, run as the real binary: `dlq show`, `dlq purge
//! --older-than` and `dlq replay --all` over 10,000 dead letters finish with the right counts, and the
//! process's peak memory does not grow with the queue.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use lapin::{
    options::BasicPublishOptions,
    types::{AMQPValue, FieldTable, LongString},
};
use resetmail_shared::{EmailAddress, Job, PasswordResetJob, amqp, topology::headers};
use resetmail_testkit::{PATIENCE, broker::TestBroker, db::TestDb, process::Process};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use uuid::Uuid;

/// Dead letters in the queue.
const LETTERS: usize = 10_000;
/// How many of them were last attempted two days ago (the rest just now).
const OLD: usize = 2_000;
/// How much more memory (peak resident set, KiB) a command over the whole queue may take than
/// `dlq list --limit 1`, which holds one dead letter. Measured with the debug binary on the development
/// machine (2 cores, shared): `dlq list --limit 1` 26 MB; streaming, `show` and `purge` 27 MB (4 s)
/// and `replay --all` 34 MB (10 s; its window of 256 messages in flight and its database pool); the
/// earlier implementation, which read the whole queue into memory, 48 MB for `show` (9 s) and 50 MB
/// for `replay --all` (55 s) on these 10,000.
const EXTRA_RSS_LIMIT_KIB: u64 = 16 * 1024;
/// The longest one command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What a run of the binary printed and how much memory it took at most.
struct Run {
    stdout: String,
    peak_rss_kib: u64,
}

/// Runs `resetmail-worker args…` on the test's database and broker, sampling its peak resident set
/// while it runs.
async fn run_worker(db: &TestDb, broker: &TestBroker, args: &[&str]) -> Run {
    let env = [
        ("DATABASE_URL", db.config.url.clone()),
        ("AMQP_URL", broker.config.nodes.to_env()),
        ("RESETMAIL_QUEUE_PREFIX", broker.config.queue_prefix.clone()),
        (
            "RESETMAIL_RETRY_DELAYS",
            "100ms,100ms,100ms,100ms,100ms".into(),
        ),
        ("RUST_LOG", "warn".into()),
    ];
    let what = args.join(" ");
    let started = Instant::now();
    let mut worker = Process::start(crate::binary::BINARY, args, &env);
    let (status, peak_rss_bytes) = worker.wait_exit_with_peak_rss(COMMAND_TIMEOUT).await;
    let stdout = worker.stdout().join("\n");
    assert!(
        status.success(),
        "`{what}` failed ({status}):\n{stdout}\n{}",
        worker.stderr().join("\n")
    );
    assert!(peak_rss_bytes > 0, "`{what}`: no memory figure was read");
    let peak_rss_kib = peak_rss_bytes / 1024;
    eprintln!(
        "`{what}`: peak RSS {peak_rss_kib} KiB, {} ms",
        started.elapsed().as_millis()
    );
    Run {
        stdout,
        peak_rss_kib,
    }
}

/// Publishes `LETTERS` dead letters straight to the dead-letter queue, as the worker leaves them,
/// a window of confirms at a time; the first `OLD` were last attempted two days ago.
async fn publish_dead_letters(broker: &TestBroker) -> Vec<Uuid> {
    let queue = broker.topology.dead_letter_queue();
    let old = OffsetDateTime::now_utc() - time::Duration::days(2);
    let mut jobs = Vec::with_capacity(LETTERS);
    for chunk in (0..LETTERS).collect::<Vec<_>>().chunks(500) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for n in chunk {
            let job = PasswordResetJob {
                job_id: Uuid::new_v4(),
                email: EmailAddress::parse(&format!("user{n}@example.com")).unwrap(),
                correlation_id: Uuid::new_v4(),
                requested_at: OffsetDateTime::now_utc(),
            };
            let at = if *n < OLD {
                old
            } else {
                OffsetDateTime::now_utc()
            }
            .format(&Rfc3339)
            .unwrap();
            let mut table = FieldTable::default();
            for (key, value) in [
                (headers::ERROR_CLASS, "permanent"),
                (
                    headers::LAST_ERROR,
                    "permanent error (550): 5.1.1 <u***@example.com>: Recipient address rejected: \
                     User unknown in virtual mailbox table",
                ),
                (headers::FIRST_ATTEMPT_AT, &at),
                (headers::LAST_ATTEMPT_AT, &at),
                (headers::ORIGINAL_ROUTING_KEY, &broker.topology.work_queue()),
            ] {
                table.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
            }
            table.insert(headers::ATTEMPTS.into(), AMQPValue::LongLongInt(1));
            let job = Job::PasswordReset(job);
            let properties = amqp::job_properties(&job).with_headers(table);
            let confirm = broker
                .channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &job.encode().unwrap(),
                    properties,
                )
                .await
                .unwrap();
            confirms.push(confirm);
            jobs.push(job.job_id());
        }
        for confirm in confirms {
            let confirmation = confirm.await.unwrap();
            assert!(confirmation.is_ack(), "the broker refused a dead letter");
        }
    }
    jobs
}

#[tokio::test]
async fn dlq_commands_stream_ten_thousand_dead_letters_in_bounded_memory() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let dead = broker.topology.dead_letter_queue();
    let work = broker.topology.work_queue();
    let jobs = publish_dead_letters(&broker).await;
    broker.wait_for_count(&dead, LETTERS as u32, PATIENCE).await;
    let baseline = run_worker(&db, &broker, &["dlq", "list", "--limit", "1"]).await;
    assert!(
        baseline
            .stdout
            .contains(&format!("1 shown, {LETTERS} in the dead-letter queue")),
        "{}",
        baseline.stdout
    );
    broker.wait_for_count(&dead, LETTERS as u32, PATIENCE).await;
    let mut peaks = Vec::new();

    // show: one near the end is found, and nothing is consumed.
    let wanted = jobs[LETTERS - 10];
    let shown = run_worker(&db, &broker, &["dlq", "show", &wanted.to_string()]).await;
    let letter: serde_json::Value = serde_json::from_str(&shown.stdout)
        .unwrap_or_else(|error| panic!("{error}: {}", shown.stdout));
    assert_eq!(letter["job_id"], serde_json::json!(wanted.to_string()));
    peaks.push(("show", shown.peak_rss_kib));
    broker.wait_for_count(&dead, LETTERS as u32, PATIENCE).await;

    // purge --older-than: exactly the old ones go.
    let purged = run_worker(&db, &broker, &["dlq", "purge", "--older-than", "1d"]).await;
    assert_eq!(purged.stdout.trim(), format!("purged {OLD} dead letters"));
    peaks.push(("purge --older-than", purged.peak_rss_kib));
    let recent = (LETTERS - OLD) as u32;
    broker.wait_for_count(&dead, recent, PATIENCE).await;

    // replay --all: every remaining job is back in the work queue once, attempt count reset.
    let replayed = run_worker(&db, &broker, &["dlq", "replay", "--all"]).await;
    assert_eq!(
        replayed.stdout.trim(),
        format!("replayed {recent} dead letters")
    );
    peaks.push(("replay --all", replayed.peak_rss_kib));
    broker.wait_for_count(&work, recent, PATIENCE).await;
    assert_eq!(broker.count(&dead).await, 0, "dead letters are left");
    let mut back = HashSet::new();
    while let Some(message) = broker.take(&work).await {
        let id = message
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(back.insert(id.clone()), "job {id} was replayed twice");
        assert!(
            resetmail_testkit::broker::header(&message, headers::ATTEMPTS).is_none(),
            "job {id} kept its attempt count"
        );
    }
    let expected: HashSet<String> = jobs[OLD..].iter().map(ToString::to_string).collect();
    assert!(
        back == expected,
        "the work queue does not hold the recent jobs"
    );

    let limit = baseline.peak_rss_kib + EXTRA_RSS_LIMIT_KIB;
    for (command, peak) in peaks {
        assert!(
            peak <= limit,
            "`dlq {command}` peaked at {peak} KiB, over {limit} KiB (`dlq list --limit 1`: {} KiB)",
            baseline.peak_rss_kib
        );
    }
}
