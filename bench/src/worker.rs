//! The worker phases: one worker process per run, on jobs queued beforehand, into the sink
//! answering after a chosen delay (a relay's latency); and the end-to-end run through the api.
//! Every run has a time limit, so a worker that crawls or stalls is reported, not waited for.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::{
    footprint::{self, Counters, JobStages, RunFootprint},
    load,
    pg_monitor::{PgPeak, PgWatch},
    procfs::{self, MachineCpu, Owners, PartsCpu},
    run::{self, Run},
};
use resetmail_testkit::smtp_sink::SmtpSink;

/// Counts of the sink's connections and messages during a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct SinkCounts {
    /// The most SMTP connections open at once.
    pub peak_connections: usize,
    /// SMTP connections opened.
    pub opened: usize,
    /// The most messages waiting for their answer at once.
    pub peak_in_flight: usize,
}

impl SinkCounts {
    /// The sink's counts since its last reset.
    fn of(sink: &SmtpSink) -> Self {
        Self {
            peak_connections: sink.peak_connections() as usize,
            opened: sink.connections() as usize,
            peak_in_flight: sink.peak_waiting() as usize,
        }
    }
}

/// Messages per second from the sink's first accept to its last since its reset (the first
/// starts the clock, so it is not counted); `None` before two were accepted.
pub fn acceptance_rate(sink: &SmtpSink) -> Option<f64> {
    let span = sink.acceptance_span()?;
    let n = sink.accepted();
    (n >= 2).then(|| (n - 1) as f64 / span.as_secs_f64().max(1e-9))
}

/// Sends in flight in the memory run ([`Settings::THOUSAND_IN_FLIGHT`]).
pub const IN_FLIGHT: usize = 1000;

/// The worker's settings for a run; `None` leaves the worker's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `RESETMAIL_CONCURRENCY`: jobs in flight, also the broker prefetch.
    pub concurrency: Option<u32>,
    /// `RESETMAIL_SMTP_CONNECTIONS`: the most SMTP connections to the relay.
    pub smtp_connections: Option<u32>,
    /// `RESETMAIL_DB_POOL_SIZE`: PostgreSQL connections.
    pub db_pool_size: Option<u32>,
}

impl Settings {
    /// The worker as shipped.
    pub const DEFAULT: Self = Self {
        concurrency: None,
        smtp_connections: None,
        db_pool_size: None,
    };

    /// A relay that allows 1,024 connections: by Little's law a relay answering after 200 ms
    /// carries 3,000 emails/s only on 600 connections or more (512 capped it at 2,560/s, below what
    /// the worker does at 0 ms); on the default database pool. Twice as many jobs as connections,
    /// as the defaults have (100 and 50): a job keeps its delivery while it waits for its claim and
    /// then its record, a connection only from its claim to the end of its send, and with as many
    /// jobs as connections the connections waited with the jobs (1,024 of each: 3,561–3,898
    /// emails/s at 200 ms, a job's delivery lasting 260–290 ms for the relay's 200).
    pub const RELAY: Self = Self {
        concurrency: Some(2048),
        smtp_connections: Some(1024),
        db_pool_size: Some(10),
    };

    /// [`IN_FLIGHT`] sends in flight at once, for the worker's memory.
    pub const THOUSAND_IN_FLIGHT: Self = Self {
        concurrency: Some(IN_FLIGHT as u32),
        smtp_connections: Some(IN_FLIGHT as u32),
        db_pool_size: None,
    };

    fn env(&self) -> Vec<(&'static str, String)> {
        [
            ("RESETMAIL_CONCURRENCY", self.concurrency),
            ("RESETMAIL_SMTP_CONNECTIONS", self.smtp_connections),
            ("RESETMAIL_DB_POOL_SIZE", self.db_pool_size),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?.to_string())))
        .collect()
    }

    /// How the report names these settings.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [
            ("concurrency", self.concurrency),
            ("SMTP connections", self.smtp_connections),
            ("DB pool", self.db_pool_size),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some(format!("{name} {}", value?)))
        .collect();
        if parts.is_empty() {
            "defaults".into()
        } else {
            parts.join(", ")
        }
    }
}

/// One worker run: `jobs` jobs for fresh accounts `{prefix}…`, the sink answering after
/// `relay_delay`.
pub struct Plan {
    pub settings: Settings,
    pub relay_delay: Duration,
    pub jobs: usize,
    pub prefix: &'static str,
    /// The worker's log file in the log directory, without `.log`.
    pub log: &'static str,
}

/// What one worker run measured.
pub struct WorkerRun {
    pub settings: Settings,
    pub relay_delay: Duration,
    pub jobs: usize,
    /// Emails the sink accepted before the time limit.
    pub accepted: usize,
    /// Whether every job's email arrived within the time limit.
    pub finished: bool,
    /// Whether the worker ended by itself before that.
    pub exited: bool,
    /// From the worker's start to the last email, or to the time limit.
    pub elapsed: Duration,
    /// Emails per second: from the sink's first accept to its last when the run finished, else
    /// what was accepted over `elapsed`.
    pub rate: f64,
    /// PostgreSQL connections the worker held, at the busiest sample.
    pub pg: PgPeak,
    /// The sink's connections and messages awaiting their answer.
    pub smtp: SinkCounts,
    /// CPU ms per email by part, while the worker ran.
    pub cpu: PartsCpu,
    /// CPU ms per email of the busiest programs, while the worker ran.
    pub busiest: Vec<(String, f64)>,
    /// The worker process's own CPU ms per email, start-up included.
    pub worker_cpu_ms: f64,
    /// The share of the machine's CPU time that was busy while the worker ran (0–1).
    pub machine_busy: f64,
    /// The worker's peak RSS, MB.
    pub rss_mb: f64,
    /// What the run cost PostgreSQL and the broker, per email; `None` when the worker's counters
    /// could not be read.
    pub footprint: Option<RunFootprint>,
}

impl WorkerRun {
    /// "did not finish: N of M after T s", or nothing when it finished.
    pub fn unfinished(&self) -> Option<String> {
        (!self.finished).then(|| {
            format!(
                "did not finish: {} of {} after {:.0} s{}",
                self.accepted,
                self.jobs,
                self.elapsed.as_secs_f64(),
                if self.exited {
                    " (the worker exited: see its log)"
                } else {
                    ""
                }
            )
        })
    }
}

/// Queues `plan.jobs` jobs, starts a worker with `plan.settings`, and measures it until every email
/// arrived or `limit` passed; then stops the worker and empties the queues.
pub async fn run_worker(
    run: &mut Run,
    sink: &SmtpSink,
    plan: &Plan,
    limit: Duration,
) -> anyhow::Result<WorkerRun> {
    run::seed_accounts(&run.pool, plan.prefix, plan.jobs).await?;
    load::publish_jobs(
        &run.channel,
        &run.topology,
        run::emails(plan.prefix, plan.jobs),
    )
    .await?;
    // The rows of the runs before are vacuumed now, not by autovacuum inside this run's window.
    sqlx::query("VACUUM ANALYZE").execute(&run.pool).await?;
    sink.reset();
    sink.set_delay(plan.relay_delay);
    let watch = PgWatch::open(&run.admin_url, &run.name).await?;
    let mut counters = Counters::open(&run.admin_url, &run.name).await?;
    counters.settle(&run.pool).await;
    let backends_before = counters.backends().await?;
    let pg_before = counters.read().await?;
    let metrics_addr = run::free_port()?;
    let machine_before = MachineCpu::now()?;
    let cpu_before = procfs::cpu_snapshot();
    let started = Instant::now();
    let mut env = plan.settings.env();
    env.extend([
        ("RESETMAIL_SMTP_URL", sink.url()),
        ("RESETMAIL_WORKER_HTTP_ADDR", metrics_addr.to_string()),
    ]);
    let pid = run.spawn("resetmail-worker", &format!("{}.log", plan.log), &env)?;
    let monitor = watch.watch(pid);
    let deadline = started + limit;
    let (finished, exited) = loop {
        let slice = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        if sink.reached(plan.jobs, slice).await {
            break (true, false);
        }
        let exited = run.has_exited(pid);
        if exited || Instant::now() >= deadline {
            break (false, exited);
        }
    };
    let elapsed = started.elapsed();
    let cpu_after = procfs::cpu_snapshot();
    let machine_busy = MachineCpu::now()?.busy_since(&machine_before);
    let (pg, not_ours) = monitor.stop().await;
    let owners = Owners {
        resetmail: run.pids(),
        bench: std::process::id(),
        not_ours,
        broker: run.broker_pids.clone(),
    };
    let smtp = SinkCounts::of(sink);
    let accepted = sink.accepted();
    let worker_cpu = procfs::process_cpu_seconds(pid).unwrap_or(0.0);
    let rss_mb = procfs::peak_rss_mb(pid).unwrap_or(0.0);
    // The last emails' records and acks follow their arrival: wait for them before the worker
    // stops, and for its backends to exit (and flush their statistics) before the reading.
    let worker_counters = footprint::worker_counters(metrics_addr, accepted).await;
    run.stop(pid).await;
    counters.wait_for_backends(&backends_before).await;
    let pg_after = counters.read().await?;
    run.purge_all().await?;
    sink.set_delay(Duration::ZERO);
    let rate = match (finished, acceptance_rate(sink)) {
        (true, Some(rate)) => rate,
        _ => accepted as f64 / elapsed.as_secs_f64(),
    };
    let units = accepted.max(1);
    let figures = WorkerRun {
        settings: plan.settings,
        relay_delay: plan.relay_delay,
        jobs: plan.jobs,
        accepted,
        finished,
        exited,
        elapsed,
        rate,
        pg,
        smtp,
        cpu: PartsCpu::between(&cpu_before, &cpu_after, units, &owners),
        busiest: procfs::cpu_split(
            &procfs::by_program(&cpu_before),
            &procfs::by_program(&cpu_after),
            units,
        ),
        worker_cpu_ms: worker_cpu * 1000.0 / units as f64,
        machine_busy,
        rss_mb,
        footprint: worker_counters.map(|worker| RunFootprint {
            emails: accepted as f64,
            pg: pg_after.since(&pg_before),
            worker,
        }),
    };
    eprintln!(
        "worker ({}), sink delay {} ms: {:.0} emails/s, {} PostgreSQL connections, {} SMTP \
         connections at the peak{}",
        plan.settings.describe(),
        plan.relay_delay.as_millis(),
        figures.rate,
        pg.open,
        smtp.peak_connections,
        figures
            .unfinished()
            .map(|text| format!("; {text}"))
            .unwrap_or_default()
    );
    Ok(figures)
}

/// How the end-to-end run's rate was chosen.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// Half of the lower of the api's best req/s and the worker's 0 ms emails/s.
    Half { api_peak: f64, worker_rate: f64 },
    /// As asked (`BENCH_E2E_RATE`).
    Fixed(f64),
}

impl Pace {
    pub fn rate(&self) -> f64 {
        match *self {
            Self::Half {
                api_peak,
                worker_rate,
            } => (api_peak.min(worker_rate) / 2.0).max(1.0),
            Self::Fixed(rate) => rate,
        }
    }
}

/// The end-to-end run's first second of load, at its rate but not counted: the fresh worker opens
/// its SMTP connections and prepares its statements on its database connections.
pub const E2E_WARM_UP: Duration = Duration::from_secs(1);

/// One end-to-end request's times: to the api's answer, to the email, and between the two.
struct Latency {
    answering: Option<Duration>,
    total: Option<Duration>,
    after_answer: Option<Duration>,
}

/// The end-to-end run's figures.
pub struct EndToEnd {
    /// The worker's settings.
    pub settings: Settings,
    pub pace: Pace,
    pub rate: f64,
    /// Measured requests (after the warm-up): those not answered code 0, those never emailed.
    pub requests: usize,
    pub failed: usize,
    pub missing: usize,
    /// The warm-up's requests, not counted in the figures, and their p99 (due → email accepted).
    pub warm_up_requests: usize,
    pub warm_up_p99_ms: f64,
    /// From each request's due time to the sink's `250` for its email.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The api's share: from the due time to the api's answer (publish confirmed).
    pub answered_p50_ms: f64,
    pub answered_p99_ms: f64,
    /// The worker's share: from the api's answer to the sink's `250`.
    pub after_answer_p50_ms: f64,
    pub after_answer_p99_ms: f64,
    /// The worker's own means per job, from its metrics (zero if it could not be read).
    pub stages: JobStages,
}

impl EndToEnd {
    /// Its target: every request emailed, p99 under 50 ms.
    pub fn met(&self) -> bool {
        self.missing == 0 && self.p99_ms < 50.0
    }
}

/// Requests for fresh accounts at `pace` for `seconds`, open loop, through the api at `api` and a
/// fresh worker with `settings`; each latency runs from when its request was due to the sink's
/// `250` for its recipient.
pub async fn end_to_end(
    run: &mut Run,
    sink: &SmtpSink,
    api: SocketAddr,
    settings: Settings,
    pace: Pace,
    seconds: f64,
    limit: Duration,
) -> anyhow::Result<EndToEnd> {
    let rate = pace.rate();
    let requests = (rate * seconds).ceil() as usize;
    let warm = (rate * E2E_WARM_UP.as_secs_f64()).ceil() as usize;
    let total = warm + requests;
    eprintln!(
        "end to end: {warm} + {requests} requests at {rate:.0}/s, worker ({})",
        settings.describe()
    );
    run::seed_accounts(&run.pool, "e", total).await?;
    sink.reset();
    let health = run::free_port()?;
    let mut env = settings.env();
    env.extend([
        ("RESETMAIL_SMTP_URL", sink.url()),
        ("RESETMAIL_WORKER_HTTP_ADDR", health.to_string()),
    ]);
    let pid = run.spawn("resetmail-worker", "worker-e2e.log", &env)?;
    run::wait_until_ready(health).await?;
    let clients = run::http_clients(api, 64, "unused").await?;
    // The worker's figures at the end of the warm-up, read while the load goes on.
    let warmed = tokio::spawn(async move {
        tokio::time::sleep(load::OPEN_LOOP_LEAD + E2E_WARM_UP).await;
        footprint::scrape(health).await
    });
    let sent = load::open_loop(clients, "e", rate, total).await;
    let failed = sent.failed();
    if !sink.reached(total - failed, limit).await {
        eprintln!(
            "the SMTP sink accepted {} of {} messages within {limit:?}",
            sink.accepted(),
            total - failed
        );
    }
    // Once the worker has settled every job it got, its means per job since the warm-up.
    footprint::worker_counters(health, total - failed).await;
    let at_warm_up = warmed
        .await
        .ok()
        .flatten()
        .map(|text| JobStages::from_text(&text))
        .unwrap_or_default();
    let stages = footprint::scrape(health)
        .await
        .map(|text| JobStages::from_text(&text).since(&at_warm_up))
        .unwrap_or_default();
    run.stop(pid).await;
    run.purge_all().await?;
    let accepted = sink.accepted_at();
    let latency = |i: usize| -> Latency {
        let due = load::due(sent.start, rate, i);
        let answered = sent.answered[i];
        let at = accepted.get(&format!("e{i}@bench.example")).copied();
        Latency {
            answering: answered.map(|answered| answered.saturating_duration_since(due)),
            total: at.map(|at| at.saturating_duration_since(due)),
            after_answer: at
                .zip(answered)
                .map(|(at, answered)| at.saturating_duration_since(answered)),
        }
    };
    let (mut latencies, mut answering, mut after_answer) = (Vec::new(), Vec::new(), Vec::new());
    let mut missing = 0;
    for i in warm..total {
        let latency = latency(i);
        answering.extend(latency.answering);
        after_answer.extend(latency.after_answer);
        match latency.total {
            Some(total) => latencies.push(total),
            None => missing += 1,
        }
    }
    let mut warming: Vec<Duration> = (0..warm).filter_map(|i| latency(i).total).collect();
    for durations in [
        &mut latencies,
        &mut answering,
        &mut after_answer,
        &mut warming,
    ] {
        durations.sort_unstable();
    }
    Ok(EndToEnd {
        settings,
        pace,
        rate,
        requests,
        failed: sent.answered[warm..]
            .iter()
            .filter(|at| at.is_none())
            .count(),
        missing,
        warm_up_requests: warm,
        warm_up_p99_ms: load::percentile_ms(&warming, 0.99),
        p50_ms: load::percentile_ms(&latencies, 0.50),
        p99_ms: load::percentile_ms(&latencies, 0.99),
        answered_p50_ms: load::percentile_ms(&answering, 0.50),
        answered_p99_ms: load::percentile_ms(&answering, 0.99),
        after_answer_p50_ms: load::percentile_ms(&after_answer, 0.50),
        after_answer_p99_ms: load::percentile_ms(&after_answer, 0.99),
        stages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_settings_given_reach_the_worker() {
        assert!(Settings::DEFAULT.env().is_empty());
        assert_eq!(
            Settings::THOUSAND_IN_FLIGHT.env(),
            [
                ("RESETMAIL_CONCURRENCY", "1000".to_owned()),
                ("RESETMAIL_SMTP_CONNECTIONS", "1000".to_owned()),
            ]
        );
    }

    #[test]
    fn settings_read_as_the_report_names_them() {
        assert_eq!(Settings::DEFAULT.describe(), "defaults");
        assert_eq!(
            Settings::RELAY.describe(),
            "concurrency 2048, SMTP connections 1024, DB pool 10"
        );
    }
}
