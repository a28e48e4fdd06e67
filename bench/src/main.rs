//! `resetmail-bench`: measures the api, the worker and the whole path next to the raw limits of
//! the same machine in the same run, then prints a table and one JSON line.
//!
//! Needs PostgreSQL and RabbitMQ (`DATABASE_URL`'s server, `AMQP_URL`); starts the release
//! binaries found beside itself and an SMTP sink of its own; works in a database and under a queue
//! prefix of its own and removes both at the end. `scripts/bench.sh` builds and runs it;
//! `docs/BENCHMARKS.md` says what each phase measures.
//! Knobs (environment): `BENCH_SECONDS` (3, measured seconds per api run), `BENCH_ROUNDS` (3,
//! api runs per kind and concurrency; medians are reported), `BENCH_JOBS` (10000, jobs of each
//! worker run whose sink answers at once), `BENCH_RELAY_JOBS` (20000, jobs of the run behind the
//! relay's latency), `BENCH_E2E_SECONDS` (5), `BENCH_RUN_LIMIT` (60, seconds a worker run may
//! take before it is reported as unfinished), `BENCH_E2E_RATE` (unset; when set, only the end to
//! end phase runs, at this many req/s, with the relay settings: for comparing two builds' paths
//! at one rate).

mod api;
mod baselines;
mod broker_node;
mod footprint;
mod job_transaction;
mod load;
mod per_email;
mod pg_monitor;
mod procfs;
mod report;
mod run;
mod worker;

use std::time::Duration;

use footprint::{ApiCounters, ApiFootprint, Counters};
use report::Report;
use resetmail_testkit::smtp_sink::SmtpSink;
use run::Run;
use worker::{EndToEnd, IN_FLIGHT, Pace, Plan, Settings};

/// The relay's latency of the slow relay run: the sink answers each message this long after its
/// final dot.
const RELAY_DELAY: Duration = Duration::from_millis(200);

/// The sink's delay in the memory run: long enough that every send the worker allows is in flight
/// before the first is answered.
const MEMORY_DELAY: Duration = Duration::from_secs(2);

/// What the environment asks of this run.
pub struct Options {
    seconds: f64,
    rounds: usize,
    jobs: usize,
    relay_jobs: usize,
    e2e_seconds: f64,
    e2e_rate: Option<f64>,
    run_limit: Duration,
    database_server: String,
    amqp_url: String,
}

impl Options {
    fn from_env() -> anyhow::Result<Self> {
        fn number<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
            match std::env::var(name) {
                Ok(text) => text
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{name} must be a number, got `{text}`")),
                Err(_) => Ok(default),
            }
        }
        Ok(Self {
            seconds: number("BENCH_SECONDS", 3.0)?,
            rounds: number("BENCH_ROUNDS", 3)?,
            jobs: number("BENCH_JOBS", 10_000)?,
            relay_jobs: number("BENCH_RELAY_JOBS", 20_000)?,
            e2e_seconds: number("BENCH_E2E_SECONDS", 5.0)?,
            e2e_rate: match std::env::var("BENCH_E2E_RATE") {
                Ok(_) => Some(number("BENCH_E2E_RATE", 0.0)?),
                Err(_) => None,
            },
            run_limit: Duration::from_secs_f64(number("BENCH_RUN_LIMIT", 60.0)?),
            database_server: std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
            amqp_url: std::env::var("AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        })
    }
}

/// What a run measured: every phase, or the end to end phase alone (`BENCH_E2E_RATE`).
enum Measured {
    Everything(Box<Report>),
    EndToEnd(EndToEnd),
}

/// Starts the api, ready for the load; answers its address and pid.
async fn start_api(run: &mut Run) -> anyhow::Result<(std::net::SocketAddr, u32)> {
    let api_addr = run::free_port()?;
    let api_pid = run.spawn(
        "resetmail-api",
        "api.log",
        &[
            ("RESETMAIL_HTTP_ADDR", api_addr.to_string()),
            // The limit is part of the api's work; set out of reach so that it never answers 429.
            ("RESETMAIL_RATE_LIMIT", "4000000000".into()),
            ("RESETMAIL_RATE_BURST", "4000000000".into()),
        ],
    )?;
    run::wait_until_ready(api_addr).await?;
    Ok((api_addr, api_pid))
}

/// The end to end phase alone, at `rate`.
async fn end_to_end_only(run: &mut Run, options: &Options, rate: f64) -> anyhow::Result<EndToEnd> {
    let (api_addr, _) = start_api(run).await?;
    let sink = SmtpSink::start().await;
    worker::end_to_end(
        run,
        &sink,
        api_addr,
        Settings::RELAY,
        Pace::Fixed(rate),
        options.e2e_seconds,
        options.run_limit,
    )
    .await
}

/// Every phase, in order: the api, the baselines, the worker runs, end to end.
async fn bench(run: &mut Run, options: &Options) -> anyhow::Result<Report> {
    let (api_addr, api_pid) = start_api(run).await?;
    eprintln!("api ready; measuring the api against raw confirmed publishes");
    let mut counters = Counters::open(&run.admin_url, &run.name).await?;
    let pg_stat_statements = counters.statements_loaded().await;
    counters.settle(&run.pool).await;
    let api_counters = async || {
        let text = footprint::scrape(api_addr).await?;
        Some(ApiCounters::from_text(&text, load::RESET_PATH))
    };
    let (pg_before, api_before) = (counters.read().await?, api_counters().await);
    let api = api::bench_api(run, options, api_addr).await?;
    let (pg_after, api_after) = (counters.read().await?, api_counters().await);
    let api_footprint = api_before
        .zip(api_after)
        .map(|(before, after)| ApiFootprint {
            api: after.since(&before),
            pg: pg_after.since(&pg_before),
        });

    eprintln!("measuring the baselines: a bare SMTP client and the token transaction");
    let sink = SmtpSink::start().await;
    let smtp = baselines::bare_smtp(&sink, options.jobs).await?;
    let token_accounts = run::seed_accounts(&run.pool, "t", options.jobs).await?;
    let tokens = baselines::token_transactions(&run.pool, &run.name, token_accounts).await?;
    run::seed_accounts(&run.pool, "j", options.jobs).await?;
    let job_tx = baselines::job_transactions(&run.pool, run::emails("j", options.jobs)).await?;

    let limit = options.run_limit;
    let plan = |prefix, settings, relay_delay, jobs, log| Plan {
        settings,
        relay_delay,
        jobs,
        prefix,
        log,
    };
    let (jobs, relay_jobs) = (options.jobs, options.relay_jobs);
    let defaults = plan(
        "w",
        Settings::DEFAULT,
        Duration::ZERO,
        jobs,
        "worker-defaults",
    );
    let default_run = worker::run_worker(run, &sink, &defaults, limit).await?;
    let fast = plan(
        "z",
        Settings::RELAY,
        Duration::ZERO,
        jobs,
        "worker-relay-0ms",
    );
    let relay_fast = worker::run_worker(run, &sink, &fast, limit).await?;
    let slow = plan(
        "d",
        Settings::RELAY,
        RELAY_DELAY,
        relay_jobs,
        "worker-relay-slow",
    );
    let relay_slow = worker::run_worker(run, &sink, &slow, limit).await?;
    let in_flight = Settings::THOUSAND_IN_FLIGHT;
    let thousand = plan(
        "m",
        in_flight,
        MEMORY_DELAY,
        2 * IN_FLIGHT,
        "worker-in-flight",
    );
    let memory = worker::run_worker(run, &sink, &thousand, limit).await?;

    // End to end with whichever settings drained more at 0 ms, at half of what both the api and
    // that worker can take, so that it measures the path and not a growing queue.
    let (settings, worker_rate) = if relay_fast.finished && relay_fast.rate > default_run.rate {
        (relay_fast.settings, relay_fast.rate)
    } else {
        (default_run.settings, default_run.rate)
    };
    let api_peak = api.iter().map(|row| row.api.per_second).fold(0.0, f64::max);
    let e2e = worker::end_to_end(
        run,
        &sink,
        api_addr,
        settings,
        Pace::Half {
            api_peak,
            worker_rate,
        },
        options.e2e_seconds,
        limit,
    )
    .await?;
    Ok(Report {
        api,
        smtp,
        tokens,
        job_tx,
        default_run,
        relay_fast,
        relay_slow,
        memory,
        e2e,
        api_rss: procfs::peak_rss_mb(api_pid)?,
        api_footprint,
        pg_stat_statements,
        table_sizes: footprint::table_sizes(&run.pool).await.ok(),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::from_env()?;
    let mut run = Run::start(&options).await?;
    let measured = match options.e2e_rate {
        Some(rate) => end_to_end_only(&mut run, &options, rate)
            .await
            .map(Measured::EndToEnd),
        None => bench(&mut run, &options)
            .await
            .map(|report| Measured::Everything(Box::new(report))),
    };
    let logs = run.log_dir.clone();
    run.cleanup().await;
    match measured {
        Ok(Measured::Everything(report)) => {
            report.print();
            Ok(())
        }
        Ok(Measured::EndToEnd(e2e)) => {
            report::print_end_to_end(&e2e);
            println!("{}", report::end_to_end_json(&e2e));
            Ok(())
        }
        Err(error) => Err(error.context(format!("the processes' logs are in {}", logs.display()))),
    }
}
