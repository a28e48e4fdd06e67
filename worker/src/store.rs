//! The database work of the jobs in flight, batched: each job asks for its claim or its record and
//! waits; a few lanes, each on a connection of its own, take whatever is waiting, do it with one
//! transaction per batch of claims and one statement per batch of records, and answer every job.
//! So the connections the worker holds are the lanes' (never more than configured, whatever the
//! concurrency), and the busier the database, the larger its batches.
//!
//! A batch's cost is mostly its round trips, not its jobs: many batches of a few jobs each cost
//! the database and the worker far more than one batch of them all. So while a lane runs a batch,
//! the work that comes in waits for the next batch, which another lane starts at once only when
//! enough work waits for it ([`JOIN_AT`]) or the running batch is slow ([`JOIN_AFTER`]): under a
//! light load one batch runs at a time and takes all that came meanwhile; under a heavy one the
//! lanes run side by side, each with a full batch.
//!
//! A lane the database refuses (`too many clients`, a role's `CONNECTION LIMIT`) retries with
//! backoff while the others carry the work; the refusal is logged at most once a minute. With no
//! lane connected a claim waits [`CLAIM_PATIENCE`], then fails.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use resetmail_shared::{
    amqp::Backoff,
    db::{
        claims::{self, Claim, ClaimRequest, Rules, SentEmail, UnsentEmail},
        users::Accounts,
    },
};
use sqlx::{Connection as _, PgConnection, postgres::PgConnectOptions};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Longest a claim waits for a lane before the job is put back (the database is unreachable).
pub const CLAIM_PATIENCE: Duration = Duration::from_secs(5);

/// Most jobs in one batch.
const MAX_BATCH: usize = 512;

/// While another lane runs a batch, a lane starts the next one once this many jobs wait for it.
const JOIN_AT: usize = 64;

/// ... or once it waited this long for the running batches to end (one may be stuck on a
/// connection that no longer answers).
const JOIN_AFTER: Duration = Duration::from_millis(100);

/// A lane's connection failure is logged at most this often (by all lanes together).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Why the database work of a job failed; the text of the database's error.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct DbError(String);

/// What a job records once its email was sent or not.
#[derive(Clone, Debug)]
pub enum Record {
    /// The mail server accepted the email.
    Sent(SentEmail),
    /// It did not leave.
    Unsent(UnsentEmail),
}

enum Work {
    Claim(ClaimRequest, oneshot::Sender<Result<Claim, DbError>>),
    /// Answers whether the job's lease was still its own.
    Record(Record, oneshot::Sender<Result<bool, DbError>>),
}

impl Work {
    /// Whether the job stopped waiting for the answer.
    fn abandoned(&self) -> bool {
        match self {
            Self::Claim(_, answer) => answer.is_closed(),
            Self::Record(_, answer) => answer.is_closed(),
        }
    }
}

/// What every lane needs.
struct Lanes {
    options: PgConnectOptions,
    accounts: Accounts,
    rules: Rules,
    token_ttl: Duration,
    work: tokio::sync::Mutex<mpsc::UnboundedReceiver<Work>>,
    /// Batches running now.
    running: AtomicUsize,
    /// Raised when work comes in and when a batch ends.
    changed: Notify,
    last_refusal_log: Mutex<Option<Instant>>,
    /// Fires when the store is dropped.
    closed: CancellationToken,
}

/// The worker's way to the database for its jobs.
pub struct Store {
    queue: mpsc::UnboundedSender<Work>,
    lanes: Arc<Lanes>,
}

impl Drop for Store {
    fn drop(&mut self) {
        self.lanes.closed.cancel();
    }
}

impl Store {
    /// Starts `lanes` lanes connecting with `options`; they stop once the store is dropped.
    pub fn start(
        options: PgConnectOptions,
        lanes: usize,
        accounts: Accounts,
        rules: Rules,
        token_ttl: Duration,
    ) -> Self {
        let (queue, work) = mpsc::unbounded_channel();
        let shared = Arc::new(Lanes {
            options,
            accounts,
            rules,
            token_ttl,
            work: tokio::sync::Mutex::new(work),
            running: AtomicUsize::new(0),
            changed: Notify::new(),
            last_refusal_log: Mutex::new(None),
            closed: CancellationToken::new(),
        });
        for _ in 0..lanes.max(1) {
            tokio::spawn(lane(shared.clone()));
        }
        Self {
            queue,
            lanes: shared,
        }
    }

    fn submit(&self, work: Work) -> Result<(), DbError> {
        self.queue
            .send(work)
            .map_err(|_| DbError("the worker is stopping".into()))?;
        self.lanes.changed.notify_waiters();
        Ok(())
    }

    /// Claims a job (see [`claims::claim`]); fails when no lane answers within [`CLAIM_PATIENCE`].
    pub async fn claim(&self, request: ClaimRequest) -> Result<Claim, DbError> {
        let asked = Instant::now();
        let (answer, answered) = oneshot::channel();
        self.submit(Work::Claim(request, answer))?;
        let claim = match tokio::time::timeout(CLAIM_PATIENCE, answered).await {
            Ok(Ok(claim)) => claim,
            Ok(Err(_)) => Err(DbError("the worker is stopping".into())),
            Err(_) => Err(DbError(format!(
                "no database connection answered within {CLAIM_PATIENCE:?}"
            ))),
        };
        waited("claim", asked);
        claim
    }

    /// Records what became of a claimed job's email; true if the job's lease was still its own
    /// (false: another delivery took the job over). Waits as long as the lanes need.
    pub async fn record(&self, record: Record) -> Result<bool, DbError> {
        let asked = Instant::now();
        let (answer, answered) = oneshot::channel();
        self.submit(Work::Record(record, answer))?;
        let recorded = answered
            .await
            .unwrap_or_else(|_| Err(DbError("the worker is stopping".into())));
        waited("record", asked);
        recorded
    }
}

/// Notes how long a job waited for the answer of `kind` (`claim` or `record`).
fn waited(kind: &'static str, asked: Instant) {
    metrics::histogram!("resetmail_worker_db_wait_seconds", "kind" => kind)
        .record(asked.elapsed().as_secs_f64());
}

/// One lane: a connection, then batch after batch on it, until the store is dropped.
async fn lane(lanes: Arc<Lanes>) {
    let mut connection: Option<PgConnection> = None;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    // Looked up at each change: the lanes start before the metrics recorder is installed.
    let connected = || metrics::gauge!("resetmail_worker_db_connections");
    loop {
        // A connection first: work waits for the lanes that have one.
        let Some(open) = connection.as_mut() else {
            match PgConnection::connect_with(&lanes.options).await {
                Ok(open) => {
                    connected().increment(1.0);
                    connection = Some(open);
                    backoff.reset();
                }
                Err(error) => {
                    lanes.log_refusal(&error);
                    tokio::select! {
                        () = lanes.closed.cancelled() => return,
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
            continue;
        };
        let batch = {
            let mut work = lanes.work.lock().await;
            let Some(first) = work.recv().await else {
                connected().decrement(1.0);
                return;
            };
            lanes.wait_for_turn(&work).await;
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match work.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            batch
        };
        lanes.running.fetch_add(1, Ordering::SeqCst);
        let ran = run(open, &lanes, batch).await;
        lanes.running.fetch_sub(1, Ordering::SeqCst);
        lanes.changed.notify_waiters();
        if let Err(error) = ran {
            // Whatever failed — the connection, or the server behind it (shut down by an operator,
            // or a replica that a failover left at the database's address) — the next batch goes
            // on a new connection: a few milliseconds, against a lane stuck on a dead session.
            tracing::warn!(%error, "a database batch failed; the lane reconnects");
            connected().decrement(1.0);
            connection = None;
        }
    }
}

impl Lanes {
    /// Waits, holding the first job of the next batch and the queue, until no batch runs, or
    /// [`JOIN_AT`] jobs wait, or [`JOIN_AFTER`] passed.
    async fn wait_for_turn(&self, work: &mpsc::UnboundedReceiver<Work>) {
        let deadline = tokio::time::Instant::now() + JOIN_AFTER;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so that a change right after it is not missed.
            changed.as_mut().enable();
            if self.running.load(Ordering::SeqCst) == 0 || work.len() + 1 >= JOIN_AT {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
    }

    fn log_refusal(&self, error: &sqlx::Error) {
        let mut last = self
            .last_refusal_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_INTERVAL) {
            *last = Some(Instant::now());
            tracing::warn!(%error, "the database refused a connection; working on the connections it allowed (logged at most once a minute)");
        }
    }
}

/// Does a batch: its claims in one transaction (again, if that transaction met a deadlock), then
/// its records in one statement; the claims first, as a claim stands between a request and its
/// email, a record only between the email and the job's ack. Answers every job; returns the
/// error that failed a part.
async fn run(
    connection: &mut PgConnection,
    lanes: &Lanes,
    batch: Vec<Work>,
) -> Result<(), sqlx::Error> {
    let (mut claims, mut claim_answers) = (Vec::new(), Vec::new());
    let (mut sent, mut unsent, mut record_answers) = (Vec::new(), Vec::new(), Vec::new());
    for work in batch.into_iter().filter(|work| !work.abandoned()) {
        match work {
            Work::Claim(request, answer) => {
                claims.push(request);
                claim_answers.push(answer);
            }
            Work::Record(Record::Sent(email), answer) => {
                record_answers.push((email.job_id, answer));
                sent.push(email);
            }
            Work::Record(Record::Unsent(email), answer) => {
                record_answers.push((email.job_id, answer));
                unsent.push(email);
            }
        }
    }
    metrics::histogram!("resetmail_worker_db_batch_jobs")
        .record((claims.len() + record_answers.len()) as f64);
    let mut failed = None;
    if !claims.is_empty() {
        let mut tries = 0;
        let claimed = loop {
            tries += 1;
            let claimed = claims::claim(connection, &lanes.accounts, &lanes.rules, &claims).await;
            metrics::counter!("resetmail_worker_db_transactions_total", "kind" => "claim")
                .increment(1);
            match claimed {
                Err(sqlx::Error::Database(error))
                    if tries < 3 && matches!(error.code().as_deref(), Some("40P01" | "40001")) => {}
                other => break other,
            }
        };
        match claimed {
            Ok(answers) => {
                for ((answer, request), claim) in
                    claim_answers.into_iter().zip(&claims).zip(answers)
                {
                    // A job that stopped waiting (its claim took longer than CLAIM_PATIENCE, and
                    // it was put back) holds a lease no one will use: given back at once, so that
                    // its next delivery need not wait for the lease to run out.
                    if let Err(Ok(Claim::Send(_) | Claim::Notice)) = answer.send(Ok(claim)) {
                        unsent.push(UnsentEmail {
                            job_id: request.job.job_id,
                            lease_id: request.lease_id,
                            error: "claimed after the job stopped waiting for its claim".into(),
                            give_up: false,
                        });
                    }
                }
            }
            Err(error) => {
                for answer in claim_answers {
                    let _ = answer.send(Err(DbError(error.to_string())));
                }
                failed = Some(error);
            }
        }
    }
    if !record_answers.is_empty() || !unsent.is_empty() {
        let recorded = claims::record(connection, lanes.token_ttl, &sent, &unsent).await;
        metrics::counter!("resetmail_worker_db_transactions_total", "kind" => "record")
            .increment(1);
        for (job_id, answer) in record_answers {
            let _ = answer.send(match &recorded {
                Ok(recorded) => Ok(recorded.contains(&job_id)),
                Err(error) => Err(DbError(error.to_string())),
            });
        }
        failed = failed.or(recorded.err());
    }
    failed.map_or(Ok(()), Err)
}
