//! The worker's metrics, described and present at zero from start-up, so that `rate()` and
//! `increase()` see every series before its first event.

use crate::outcome::DeadClass;

/// Every `outcome` label of `resetmail_worker_jobs_total`.
pub const JOB_OUTCOMES: [&str; 12] = [
    "sent",
    "notified",
    "unknown_account",
    "banned",
    "inactive",
    "expired",
    "throttled",
    "duplicate",
    "retry",
    "dead",
    "paused",
    "requeued",
];

/// Describes every series and makes it present at zero; `retry_steps` is the number of retry
/// steps (each failed attempt up to it has its `step` label). Call once the recorder is installed.
pub fn register(retry_steps: usize) {
    resetmail_shared::amqp::describe_metrics();
    metrics::describe_counter!(
        "resetmail_worker_jobs_total",
        "Handled deliveries, by outcome"
    );
    metrics::describe_histogram!(
        "resetmail_worker_send_seconds",
        metrics::Unit::Seconds,
        "One SMTP send (or outbox write)"
    );
    metrics::describe_counter!(
        "resetmail_worker_retries_total",
        "Retry copies queued, by the attempt that failed"
    );
    metrics::describe_counter!(
        "resetmail_worker_dead_letters_total",
        "Jobs moved to the dead letters, by class"
    );
    metrics::describe_gauge!("resetmail_worker_jobs_in_flight", "Jobs being handled now");
    metrics::describe_gauge!(
        "resetmail_worker_consuming",
        "1 while consuming, 0 while paused or reconnecting"
    );
    for outcome in JOB_OUTCOMES {
        metrics::counter!("resetmail_worker_jobs_total", "outcome" => outcome).increment(0);
    }
    for step in 1..=retry_steps {
        metrics::counter!("resetmail_worker_retries_total", "step" => step.to_string())
            .increment(0);
    }
    for class in [
        DeadClass::Permanent,
        DeadClass::Exhausted,
        DeadClass::Malformed,
    ] {
        metrics::counter!("resetmail_worker_dead_letters_total", "class" => class.as_str())
            .increment(0);
    }
    let _registered = metrics::histogram!("resetmail_worker_send_seconds");
    metrics::describe_gauge!(
        "resetmail_worker_db_connections",
        "Database connections the jobs' lanes hold now"
    );
    metrics::describe_histogram!(
        "resetmail_worker_db_batch_jobs",
        "Jobs whose claims and records one lane's batch carried"
    );
    metrics::describe_histogram!(
        "resetmail_worker_db_wait_seconds",
        metrics::Unit::Seconds,
        "From a job asking for its claim or its record to the answer: waiting for a lane, then the batch's statements"
    );
    metrics::describe_histogram!(
        "resetmail_worker_job_seconds",
        metrics::Unit::Seconds,
        "One delivery, from its arrival to its settlement (ack, nack or copy confirmed)"
    );
    metrics::describe_counter!(
        "resetmail_worker_db_transactions_total",
        "Transactions of the jobs' lanes: a batch's claim transaction (each try) and its record statement"
    );
    for kind in ["claim", "record"] {
        metrics::counter!("resetmail_worker_db_transactions_total", "kind" => kind).increment(0);
        let _registered = metrics::histogram!("resetmail_worker_db_wait_seconds", "kind" => kind);
    }
    let _registered = metrics::histogram!("resetmail_worker_job_seconds");
    metrics::describe_counter!(
        "resetmail_worker_ack_frames_total",
        "basic.ack frames sent; one may ack many deliveries (multiple)"
    );
    metrics::counter!("resetmail_worker_ack_frames_total").increment(0);
    metrics::gauge!("resetmail_worker_jobs_in_flight").increment(0.0);
    metrics::gauge!("resetmail_worker_consuming").increment(0.0);
}

#[cfg(test)]
mod tests {
    use resetmail_shared::db::deliveries::Outcome;

    use super::*;

    #[test]
    fn every_final_outcome_of_a_delivery_has_its_job_label() {
        for outcome in [
            Outcome::Sent,
            Outcome::UnknownAccount,
            Outcome::Banned,
            Outcome::Inactive,
            Outcome::Expired,
            Outcome::Throttled,
        ] {
            assert!(JOB_OUTCOMES.contains(&outcome.as_str()), "{outcome:?}");
        }
    }
}
