//! A broker that refuses the worker's retry copies: after three refusals in a row the worker opens a
//! new connection instead of sending the job round the work queue on a channel that refuses all,
//! and once the broker takes copies again the job goes through its retries and out.

use resetmail_testkit::{
    PATIENCE, broker::TestBroker, db::TestDb, process::Process, smtp_sink::SmtpSink,
};

use crate::binary::{BINARY, accounts, environment, queue_jobs};

/// A RabbitMQ policy of the test's own (`rabbitmqctl set_policy`), cleared when dropped.
struct Policy {
    name: String,
}

impl Policy {
    /// Applies `definition` to the queues whose names match `pattern`.
    fn set(name: String, pattern: &str, definition: &str) -> Policy {
        rabbitmqctl(&[
            "set_policy",
            "--apply-to",
            "queues",
            &name,
            pattern,
            definition,
        ]);
        Policy { name }
    }
}

impl Drop for Policy {
    fn drop(&mut self) {
        rabbitmqctl(&["clear_policy", &self.name]);
    }
}

fn rabbitmqctl(args: &[&str]) {
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "rabbitmqctl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn a_worker_whose_retry_copies_are_refused_reconnects_and_the_job_still_goes_out() {
    let db = TestDb::new().await;
    let broker = TestBroker::new().await;
    let sink = SmtpSink::start().await;
    let addresses = accounts(&db, 1).await;
    // The retry queues take nothing: a full queue that refuses, as a channel gone bad does.
    let prefix = regex_escape(&broker.config.queue_prefix);
    let policy = Policy::set(
        format!("{}-refuse", broker.config.queue_prefix),
        &format!("^{prefix}\\.retry\\."),
        r#"{"max-length":0,"overflow":"reject-publish"}"#,
    );
    sink.fail_data(451, "4.3.0 try again later", 1000);
    let mut env = environment(&db.config, &broker, &sink);
    env.push(("RESETMAIL_REQUEUE_DELAY", "100ms".into()));
    let mut worker = Process::start(BINARY, &[], &env);
    queue_jobs(&broker, &addresses).await;

    worker
        .wait_for_line(
            "the worker replacing a connection that refuses copies",
            PATIENCE,
            |line| line.contains("refuses the retry copies and dead letters; reconnecting"),
        )
        .await;
    drop(policy);
    sink.clear_faults();
    sink.wait_for(1, PATIENCE).await;
    worker.stop_cleanly(PATIENCE).await;
}

/// `text` with the regular-expression characters a queue prefix may hold escaped.
fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| match c {
            '.' | '-' | '+' | '*' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '^' | '$' | '|'
            | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}
