//! What one email (and one api request) costs PostgreSQL and RabbitMQ, measured: the server's WAL
//! (bytes from its insert position, records and full-page images from `pg_stat_wal`), the bench
//! database's transactions and rows written (`pg_stat_database`), and, from the worker's and the
//! api's own Prometheus counters, the lanes' transactions, the batches, and the broker's messages.
//!
//! PostgreSQL's statistics reach its shared counters when a backend flushes them: at most once a
//! second while busy, up to 10 s after it went idle, and when it exits. So the bench's own idle
//! connections flush before the first reading ([`Counters::settle`]), and the worker's flush by
//! exiting before the second ([`Counters::wait_for_backends`]).

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use sqlx::{Connection as _, PgConnection, PgPool};

use crate::load::HttpClient;

/// Statements of one claim transaction in the bench, where every job of a batch is new to the
/// database, accounts are built-in and notices are off (`shared/src/db/claims.rs`): `BEGIN`, the
/// jobs' rows' `SELECT … FOR NO KEY UPDATE` (none yet), the accounts' `SELECT … FOR NO KEY
/// UPDATE`, the counts' `SELECT`, the decided rows' `INSERT`, `COMMIT`.
pub const CLAIM_STATEMENTS: f64 = 6.0;

/// A record is one statement, its own transaction (`claims::record`).
pub const RECORD_STATEMENTS: f64 = 1.0;

/// PostgreSQL's cumulative counters at one moment (or, from [`PgCounters::since`], their growth).
#[derive(Clone, Copy, Debug, Default)]
pub struct PgCounters {
    /// The WAL insert position, in bytes: every database's WAL, and the server's own.
    pub wal_bytes: f64,
    /// `pg_stat_wal`: WAL records and full-page images, the whole server's.
    pub wal_records: f64,
    pub wal_fpi: f64,
    /// `pg_stat_database` of the bench's database: commits plus rollbacks, and rows written.
    pub xacts: f64,
    pub inserted: f64,
    pub updated: f64,
    pub deleted: f64,
}

impl PgCounters {
    /// What grew from `before` to `self`.
    pub fn since(&self, before: &Self) -> Self {
        Self {
            wal_bytes: self.wal_bytes - before.wal_bytes,
            wal_records: self.wal_records - before.wal_records,
            wal_fpi: self.wal_fpi - before.wal_fpi,
            xacts: self.xacts - before.xacts,
            inserted: self.inserted - before.inserted,
            updated: self.updated - before.updated,
            deleted: self.deleted - before.deleted,
        }
    }

    /// Every figure divided by `units` (emails, requests).
    pub fn per(&self, units: f64) -> Self {
        let units = units.max(1.0);
        Self {
            wal_bytes: self.wal_bytes / units,
            wal_records: self.wal_records / units,
            wal_fpi: self.wal_fpi / units,
            xacts: self.xacts / units,
            inserted: self.inserted / units,
            updated: self.updated / units,
            deleted: self.deleted / units,
        }
    }
}

/// A connection to the server's maintenance database (not the bench's, so that its readings are
/// not counted among the bench database's transactions) that reads [`PgCounters`].
pub struct Counters {
    connection: PgConnection,
    database: String,
}

impl Counters {
    /// Connects to `admin_url` (the server's maintenance database) to read about `database`.
    pub async fn open(admin_url: &str, database: &str) -> anyhow::Result<Self> {
        Ok(Self {
            connection: PgConnection::connect(admin_url).await?,
            database: database.to_owned(),
        })
    }

    /// The counters now.
    pub async fn read(&mut self) -> anyhow::Result<PgCounters> {
        let (wal_bytes, wal_records, wal_fpi, xacts, inserted, updated, deleted): (
            f64,
            f64,
            f64,
            f64,
            f64,
            f64,
            f64,
        ) = sqlx::query_as(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::float8,
                    w.wal_records::float8, w.wal_fpi::float8,
                    (d.xact_commit + d.xact_rollback)::float8, d.tup_inserted::float8,
                    d.tup_updated::float8, d.tup_deleted::float8
             FROM pg_stat_wal AS w, pg_stat_database AS d WHERE d.datname = $1",
        )
        .bind(&self.database)
        .fetch_one(&mut self.connection)
        .await?;
        Ok(PgCounters {
            wal_bytes,
            wal_records,
            wal_fpi,
            xacts,
            inserted,
            updated,
            deleted,
        })
    }

    /// Makes every connection of the bench's `pool` flush the statistics it holds, so that its
    /// earlier work (seeding accounts, the baselines) is not counted in the next run's figures.
    pub async fn settle(&mut self, pool: &PgPool) {
        let mut held = Vec::new();
        for _ in 0..pool.size() {
            if let Ok(Ok(connection)) =
                tokio::time::timeout(Duration::from_millis(200), pool.acquire()).await
            {
                held.push(connection);
            }
        }
        for connection in &mut held {
            let _ = sqlx::query("SELECT pg_stat_force_next_flush()")
                .execute(&mut **connection)
                .await;
        }
    }

    /// The backends of the bench's database now.
    pub async fn backends(&mut self) -> anyhow::Result<HashSet<i32>> {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
        )
        .bind(&self.database)
        .fetch_all(&mut self.connection)
        .await?;
        Ok(pids.into_iter().collect())
    }

    /// Waits (at most 5 s) until the bench database's backends are only those of `before`: a
    /// stopped worker's backends flush their statistics as they exit.
    pub async fn wait_for_backends(&mut self, before: &HashSet<i32>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.backends().await {
                Ok(now) if now.is_subset(before) => return,
                Err(_) => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Whether `pg_stat_statements` could count statements on this server: it must be loaded
    /// with the server (`shared_preload_libraries`), which the bench does not change.
    pub async fn statements_loaded(&mut self) -> bool {
        sqlx::query_scalar::<_, bool>(
            "SELECT current_setting('shared_preload_libraries') LIKE '%pg_stat_statements%'",
        )
        .fetch_one(&mut self.connection)
        .await
        .unwrap_or(false)
    }
}

/// The sum of every sample of the series `name` in Prometheus text whose labels include each of
/// `labels` (`key="value"`).
pub fn series_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (series_labels, value) = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            labels
                .iter()
                .all(|label| series_labels.split(',').any(|have| have == *label))
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// `GET /metrics` of a resetmail process at `addr`.
pub async fn scrape(addr: SocketAddr) -> Option<String> {
    let mut client = HttpClient::connect(addr, "", Arc::default()).await.ok()?;
    client.text("/metrics").await
}

/// What the worker's own counters say about a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkerCounters {
    /// Deliveries handled (`resetmail_worker_jobs_total`, every outcome).
    pub deliveries: f64,
    /// Of those, settled with an ack: all but `paused` and `requeued` (`worker/src/settle.rs`).
    pub acks: f64,
    /// `basic.ack` frames that carried them (`resetmail_worker_ack_frames_total`): fewer than the
    /// acks when one frame acks many.
    pub ack_frames: f64,
    /// Copies the worker published: retries and dead letters.
    pub publishes: f64,
    /// Claim transactions (each try) and record statements (`resetmail_worker_db_transactions_total`).
    pub claim_transactions: f64,
    pub record_statements: f64,
    /// Batches of the lanes and the jobs they carried (`resetmail_worker_db_batch_jobs`).
    pub batches: f64,
    pub batch_jobs: f64,
}

impl WorkerCounters {
    pub fn from_text(text: &str) -> Self {
        let jobs = |labels: &[&str]| series_sum(text, "resetmail_worker_jobs_total", labels);
        let deliveries = jobs(&[]);
        let transactions = |kind| {
            series_sum(
                text,
                "resetmail_worker_db_transactions_total",
                &[&format!("kind=\"{kind}\"")],
            )
        };
        Self {
            deliveries,
            acks: deliveries - jobs(&["outcome=\"paused\""]) - jobs(&["outcome=\"requeued\""]),
            ack_frames: series_sum(text, "resetmail_worker_ack_frames_total", &[]),
            publishes: series_sum(text, "resetmail_worker_retries_total", &[])
                + series_sum(text, "resetmail_worker_dead_letters_total", &[]),
            claim_transactions: transactions("claim"),
            record_statements: transactions("record"),
            batches: series_sum(text, "resetmail_worker_db_batch_jobs_count", &[]),
            batch_jobs: series_sum(text, "resetmail_worker_db_batch_jobs_sum", &[]),
        }
    }

    /// The lanes' statements: [`CLAIM_STATEMENTS`] per claim transaction, [`RECORD_STATEMENTS`]
    /// per record.
    pub fn statements(&self) -> f64 {
        self.claim_transactions * CLAIM_STATEMENTS + self.record_statements * RECORD_STATEMENTS
    }
}

/// Where a worker's time per job went, from its histograms.
#[derive(Clone, Copy, Debug, Default)]
pub struct JobStages {
    /// From a delivery's arrival to its settlement (`resetmail_worker_job_seconds`).
    pub job: Histogram,
    /// Asking for the claim until its answer, and for the record (`…_db_wait_seconds`).
    pub claim: Histogram,
    pub record: Histogram,
    /// The SMTP send (`resetmail_worker_send_seconds`).
    pub send: Histogram,
}

/// A histogram's sum and count.
#[derive(Clone, Copy, Debug, Default)]
pub struct Histogram {
    pub sum: f64,
    pub count: f64,
}

impl Histogram {
    fn from_text(text: &str, name: &str, labels: &[&str]) -> Self {
        Self {
            sum: series_sum(text, &format!("{name}_sum"), labels),
            count: series_sum(text, &format!("{name}_count"), labels),
        }
    }

    /// The mean in milliseconds of what was recorded; 0 when nothing was.
    pub fn mean_ms(&self) -> f64 {
        if self.count > 0.0 {
            self.sum / self.count * 1e3
        } else {
            0.0
        }
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }
}

impl JobStages {
    pub fn from_text(text: &str) -> Self {
        let db = "resetmail_worker_db_wait_seconds";
        Self {
            job: Histogram::from_text(text, "resetmail_worker_job_seconds", &[]),
            claim: Histogram::from_text(text, db, &["kind=\"claim\""]),
            record: Histogram::from_text(text, db, &["kind=\"record\""]),
            send: Histogram::from_text(text, "resetmail_worker_send_seconds", &[]),
        }
    }

    /// What was recorded after `before`.
    pub fn since(&self, before: &Self) -> Self {
        Self {
            job: self.job.since(&before.job),
            claim: self.claim.since(&before.claim),
            record: self.record.since(&before.record),
            send: self.send.since(&before.send),
        }
    }
}

/// Scrapes the worker at `addr` until it has handled `jobs` deliveries (its last records are
/// then done) or 5 s passed; the last scrape.
pub async fn worker_counters(addr: SocketAddr, jobs: usize) -> Option<WorkerCounters> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(text) = scrape(addr).await {
            let counters = WorkerCounters::from_text(&text);
            last = Some(counters);
            if counters.deliveries >= jobs as f64 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

/// What one worker run cost per email.
#[derive(Clone, Copy, Debug)]
pub struct RunFootprint {
    /// Emails the sink accepted: the divisor.
    pub emails: f64,
    /// PostgreSQL's counters' growth from before the worker started to after it stopped.
    pub pg: PgCounters,
    /// The worker's counters at the end.
    pub worker: WorkerCounters,
}

/// The api's side of the api phase: the requests it answered and the publishes it made.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApiCounters {
    pub requests: f64,
    pub publishes: f64,
    pub publish_failures: f64,
}

impl ApiCounters {
    pub fn from_text(text: &str, reset_route: &str) -> Self {
        Self {
            requests: series_sum(
                text,
                "resetmail_api_requests_total",
                &[&format!("route=\"{reset_route}\"")],
            ),
            publishes: series_sum(text, "resetmail_api_publish_seconds_count", &[]),
            publish_failures: series_sum(text, "resetmail_api_publish_failures_total", &[]),
        }
    }

    pub fn since(&self, before: &Self) -> Self {
        Self {
            requests: self.requests - before.requests,
            publishes: self.publishes - before.publishes,
            publish_failures: self.publish_failures - before.publish_failures,
        }
    }
}

/// What the api phase cost per request.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApiFootprint {
    pub api: ApiCounters,
    pub pg: PgCounters,
}

/// The two tables that grow with every reset, as the run left them (dead row versions not yet
/// vacuumed included): rows, and bytes per row in all (heap, indexes, TOAST) and in the heap alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct TableSizes {
    pub deliveries: [f64; 3],
    pub tokens: [f64; 3],
}

pub async fn table_sizes(pool: &PgPool) -> anyhow::Result<TableSizes> {
    let (d_rows, d_all, d_heap, t_rows, t_all, t_heap): (f64, f64, f64, f64, f64, f64) =
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM deliveries)::float8,
                    pg_total_relation_size('deliveries')::float8,
                    pg_relation_size('deliveries')::float8,
                    (SELECT count(*) FROM password_reset_tokens)::float8,
                    pg_total_relation_size('password_reset_tokens')::float8,
                    pg_relation_size('password_reset_tokens')::float8",
        )
        .fetch_one(pool)
        .await?;
    let per_row =
        |rows: f64, all: f64, heap: f64| [rows, all / rows.max(1.0), heap / rows.max(1.0)];
    Ok(TableSizes {
        deliveries: per_row(d_rows, d_all, d_heap),
        tokens: per_row(t_rows, t_all, t_heap),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE resetmail_worker_jobs_total counter
resetmail_worker_jobs_total{outcome=\"sent\"} 1990
resetmail_worker_jobs_total{outcome=\"paused\"} 4
resetmail_worker_jobs_total{outcome=\"requeued\"} 6
resetmail_worker_jobs_total_other 7
resetmail_worker_retries_total{step=\"1\"} 2
resetmail_worker_dead_letters_total{class=\"permanent\"} 1
resetmail_worker_db_transactions_total{kind=\"claim\"} 100
resetmail_worker_db_transactions_total{kind=\"record\"} 90
resetmail_worker_db_batch_jobs{quantile=\"0.5\"} 20
resetmail_worker_db_batch_jobs_sum 4000
resetmail_worker_db_batch_jobs_count 150
resetmail_worker_ack_frames_total 40
";

    #[test]
    fn a_series_is_summed_over_its_labels_and_no_other_series() {
        assert_eq!(series_sum(TEXT, "resetmail_worker_jobs_total", &[]), 2000.0);
        assert_eq!(
            series_sum(TEXT, "resetmail_worker_jobs_total", &["outcome=\"paused\""]),
            4.0
        );
        assert_eq!(
            series_sum(TEXT, "resetmail_worker_db_batch_jobs", &[]),
            20.0
        );
        assert_eq!(
            series_sum(TEXT, "resetmail_worker_db_batch_jobs_count", &[]),
            150.0
        );
    }

    #[test]
    fn the_worker_s_counters_give_its_broker_and_database_work() {
        let counters = WorkerCounters::from_text(TEXT);
        assert_eq!(counters.deliveries, 2000.0);
        assert_eq!(counters.acks, 1990.0);
        assert_eq!(counters.ack_frames, 40.0);
        assert_eq!(counters.publishes, 3.0);
        assert_eq!(counters.statements(), 100.0 * 6.0 + 90.0);
        assert_eq!((counters.batches, counters.batch_jobs), (150.0, 4000.0));
    }

    #[test]
    fn a_stage_is_the_mean_of_its_histogram_since_a_reading() {
        let text = "resetmail_worker_job_seconds_sum 3
resetmail_worker_job_seconds_count 100
resetmail_worker_db_wait_seconds_bucket{kind=\"claim\",le=\"0.01\"} 40
resetmail_worker_db_wait_seconds_sum{kind=\"claim\"} 0.5
resetmail_worker_db_wait_seconds_count{kind=\"claim\"} 100
resetmail_worker_db_wait_seconds_sum{kind=\"record\"} 0.2
resetmail_worker_db_wait_seconds_count{kind=\"record\"} 100
resetmail_worker_send_seconds_sum 0
resetmail_worker_send_seconds_count 0
";
        let stages = JobStages::from_text(text);
        let means = |stages: &JobStages| {
            [stages.job, stages.claim, stages.record, stages.send].map(|h| h.mean_ms())
        };
        assert_eq!(means(&stages), [30.0, 5.0, 2.0, 0.0]);
        let before = JobStages {
            claim: Histogram {
                sum: 0.3,
                count: 60.0,
            },
            ..JobStages::default()
        };
        assert_eq!(means(&stages.since(&before)), [30.0, 5.0, 2.0, 0.0]);
    }

    #[test]
    fn the_api_s_requests_are_those_of_the_reset_route() {
        let text = "resetmail_api_requests_total{route=\"/api/v4/user/reset\",code=\"0\"} 10
resetmail_api_requests_total{route=\"/api/v4/user/reset\",code=\"40028\"} 2
resetmail_api_requests_total{route=\"/readyz\",code=\"0\"} 3
resetmail_api_publish_seconds_count 12
resetmail_api_publish_failures_total{reason=\"timeout\"} 2
";
        let api = ApiCounters::from_text(text, "/api/v4/user/reset");
        assert_eq!(
            (api.requests, api.publishes, api.publish_failures),
            (12.0, 12.0, 2.0)
        );
    }
}
