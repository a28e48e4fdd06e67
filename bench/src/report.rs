//! The report: every figure of a run, printed as a table with each target's verdict next to its
//! figure, then as one JSON line.

use serde_json::{Value, json};

use crate::{
    api::ApiRow,
    baselines::TokenBaseline,
    footprint::{ApiFootprint, TableSizes},
    job_transaction, per_email,
    worker::{EndToEnd, IN_FLIGHT, Pace, WorkerRun},
};

/// Everything one run measured.
pub struct Report {
    pub api: Vec<ApiRow>,
    /// Bare SMTP client, emails/s.
    pub smtp: f64,
    pub tokens: TokenBaseline,
    /// The job's database work alone, per second.
    pub job_tx: f64,
    /// The worker at default settings, the sink answering at once.
    pub default_run: WorkerRun,
    /// The worker at the relay settings, the sink answering at once.
    pub relay_fast: WorkerRun,
    /// The worker at the relay settings, the sink answering after the relay's latency.
    pub relay_slow: WorkerRun,
    /// The worker with [`IN_FLIGHT`] sends in flight.
    pub memory: WorkerRun,
    pub e2e: EndToEnd,
    pub api_rss: f64,
    /// What the api phase cost per request, when the api's counters could be read.
    pub api_footprint: Option<ApiFootprint>,
    /// Whether the server loads `pg_stat_statements`.
    pub pg_stat_statements: bool,
    /// The size of the tables that grow with every reset, at the end.
    pub table_sizes: Option<TableSizes>,
}

/// Each target, met or not.
struct Targets {
    api_ratio: bool,
    api_p99: bool,
    worker_ratio: bool,
    slow_rate: bool,
    slow_pg: bool,
    slow_vs_fast: bool,
    fast_vs_tokens: bool,
    e2e_p99: bool,
    api_rss: bool,
    worker_rss: bool,
    in_flight_reached: bool,
    worker_rss_in_flight: bool,
}

impl Report {
    /// The worker at defaults over the lower of its two baselines.
    fn worker_ratio(&self) -> f64 {
        self.default_run.rate / self.smtp.min(self.tokens.per_second)
    }

    /// The relay's latency run over the same worker's run without it.
    fn relay_ratio(&self) -> f64 {
        self.relay_slow.rate / self.relay_fast.rate
    }

    fn targets(&self) -> Targets {
        let row = |clients| self.api.iter().find(|row| row.clients == clients);
        let (slow, fast, memory) = (&self.relay_slow, &self.relay_fast, &self.memory);
        let in_flight_reached = memory.smtp.peak_in_flight * 100 >= IN_FLIGHT * 95;
        Targets {
            api_ratio: [16, 64]
                .iter()
                .all(|&c| row(c).is_some_and(|row| row.ratio() >= 0.85)),
            api_p99: row(64).is_some_and(|row| row.api.p99_ms < 20.0),
            worker_ratio: self.default_run.finished && self.worker_ratio() >= 0.8,
            slow_rate: slow.finished && slow.rate >= 1000.0,
            slow_pg: slow.pg.samples > 0 && slow.pg.open <= 16,
            slow_vs_fast: slow.finished && fast.finished && self.relay_ratio() >= 0.9,
            fast_vs_tokens: fast.finished && fast.rate >= 0.8 * self.tokens.per_second,
            e2e_p99: self.e2e.met(),
            api_rss: self.api_rss < 40.0,
            worker_rss: self.default_run.rss_mb < 60.0,
            in_flight_reached,
            worker_rss_in_flight: in_flight_reached && memory.rss_mb < 60.0,
        }
    }

    pub fn print(&self) {
        let targets = self.targets();
        println!();
        self.print_api();
        println!();
        self.print_worker();
        println!();
        self.print_relay(&targets);
        println!();
        per_email::print(self);
        println!();
        self.print_rest(&targets);
        println!();
        println!("{}", self.json(&targets));
    }

    fn print_api(&self) {
        println!(
            "api: POST /api/v4/user/reset, closed loop; baseline: raw lapin publish + confirm"
        );
        println!(
            "{:>7} {:>10} {:>8} {:>8} {:>7} {:>12} {:>8} {:>8} {:>7}",
            "clients",
            "api req/s",
            "p50 ms",
            "p99 ms",
            "non-0",
            "baseline/s",
            "p50 ms",
            "p99 ms",
            "ratio"
        );
        for row in &self.api {
            println!(
                "{:>7} {:>10.0} {:>8.2} {:>8.2} {:>7} {:>12.0} {:>8.2} {:>8.2} {:>7.2}",
                row.clients,
                row.api.per_second,
                row.api.p50_ms,
                row.api.p99_ms,
                row.api.failed,
                row.baseline.per_second,
                row.baseline.p50_ms,
                row.baseline.p99_ms,
                row.ratio()
            );
        }
        for row in &self.api {
            println!(
                "  CPU ms per request at {} clients: api run {}; baseline run {}",
                row.clients,
                show_cpu(&row.api_cpu),
                show_cpu(&row.baseline_cpu)
            );
        }
    }

    fn print_worker(&self) {
        let w = &self.default_run;
        println!(
            "worker (1 process, defaults): {:.0} emails/s; bare SMTP {:.0}/s; token transaction \
             {:.0}/s; ratio to the lower {:.2}{}",
            w.rate,
            self.smtp,
            self.tokens.per_second,
            self.worker_ratio(),
            w.unfinished()
                .map(|text| format!(" ({text})"))
                .unwrap_or_default()
        );
        println!(
            "  worker CPU {:.2} ms per email; the machine was {:.0} % busy while it ran",
            w.worker_cpu_ms,
            w.machine_busy * 100.0
        );
        println!("  CPU ms per email while it ran: {}", show_cpu(&w.busiest));
        println!(
            "  for reading: the job's database transaction alone ({}) {:.0}/s, {:.2} of the token \
             transaction",
            job_transaction::DESCRIPTION,
            self.job_tx,
            self.job_tx / self.tokens.per_second
        );
    }

    fn print_relay(&self, targets: &Targets) {
        let (fast, slow) = (&self.relay_fast, &self.relay_slow);
        println!(
            "relay latency: worker with {}; the sink answers each final dot after the delay",
            fast.settings.describe()
        );
        println!(
            "{:>6} {:>6} {:>9} {:>9} {:>9} {:>10} {:>11}  note",
            "delay", "jobs", "emails/s", "PG conns", "PG busy", "SMTP peak", "SMTP opened"
        );
        for run in [fast, slow] {
            println!(
                "{:>3} ms {:>6} {:>9.0} {:>9} {:>9} {:>10} {:>11}  {}",
                run.relay_delay.as_millis(),
                run.jobs,
                run.rate,
                run.pg.open,
                run.pg.busy,
                run.smtp.peak_connections,
                run.smtp.opened,
                run.unfinished().unwrap_or_default()
            );
        }
        println!(
            "  {} ms / 0 ms: {:.2} (target ≥ 0.90: {}); at {} ms: {:.0} emails/s (target ≥ 1000: \
             {}) on {} PostgreSQL connections (target ≤ 16: {})",
            slow.relay_delay.as_millis(),
            self.relay_ratio(),
            met(targets.slow_vs_fast),
            slow.relay_delay.as_millis(),
            slow.rate,
            met(targets.slow_rate),
            slow.pg.open,
            met(targets.slow_pg)
        );
        println!(
            "  at 0 ms: {:.0} emails/s = {:.2} × the token transaction (target ≥ 0.80: {})",
            fast.rate,
            fast.rate / self.tokens.per_second,
            met(targets.fast_vs_tokens)
        );
        let (cpu, token) = (&fast.cpu, &self.tokens.cpu);
        println!(
            "  CPU per email at 0 ms: resetmail {:.3} + PostgreSQL {:.3} + RabbitMQ {:.3} = {:.3} ms \
             (defaults: {:.3} ms); token transaction: PostgreSQL {:.3} + client {:.3} = {:.3} ms",
            cpu.resetmail,
            cpu.postgres,
            cpu.rabbitmq,
            cpu.service(),
            self.default_run.cpu.service(),
            token.postgres,
            token.bench,
            self.tokens.cpu_ms()
        );
    }

    fn print_rest(&self, targets: &Targets) {
        print_end_to_end(&self.e2e);
        let m = &self.memory;
        println!(
            "peak RSS: api {:.1} MB (target < 40: {}), worker at defaults {:.1} MB; worker with \
             {IN_FLIGHT} sends in flight {:.1} MB (target < 60: {})",
            self.api_rss,
            met(targets.api_rss),
            self.default_run.rss_mb,
            m.rss_mb,
            met(targets.worker_rss_in_flight)
        );
        println!(
            "  in flight at the sink ({} ms delay, {}): peak {} messages on {} connections \
             ({} needed: {}){}",
            m.relay_delay.as_millis(),
            m.settings.describe(),
            m.smtp.peak_in_flight,
            m.smtp.peak_connections,
            IN_FLIGHT * 95 / 100,
            met(targets.in_flight_reached),
            m.unfinished()
                .map(|text| format!("; {text}"))
                .unwrap_or_default()
        );
    }

    fn json(&self, targets: &Targets) -> Value {
        let w = &self.default_run;
        let e = &self.e2e;
        let token = &self.tokens.cpu;
        json!({
            "api": self.api.iter().map(|row| json!({
                "clients": row.clients,
                "rps": round(row.api.per_second),
                "p50_ms": round(row.api.p50_ms),
                "p99_ms": round(row.api.p99_ms),
                "non_zero": row.api.failed,
                "baseline_rps": round(row.baseline.per_second),
                "baseline_p50_ms": round(row.baseline.p50_ms),
                "baseline_p99_ms": round(row.baseline.p99_ms),
                "ratio": round(row.ratio()),
            })).collect::<Vec<_>>(),
            "worker": {
                "emails_per_s": round(w.rate),
                "finished": w.finished,
                "bare_smtp_per_s": round(self.smtp),
                "token_tx_per_s": round(self.tokens.per_second),
                "job_tx_per_s": round(self.job_tx),
                "ratio": round(self.worker_ratio()),
                "cpu_ms_per_email": round(w.worker_cpu_ms),
                "service_cpu_ms_per_email": round(w.cpu.service()),
                "machine_busy": round(w.machine_busy),
            },
            "relay": {
                "settings": settings_json(&self.relay_fast),
                "runs": [run_json(&self.relay_fast), run_json(&self.relay_slow)],
                "ratio_slow_to_fast": round(self.relay_ratio()),
            },
            "cpu_ms": {
                "per_email_0ms": {
                    "resetmail": round3(self.relay_fast.cpu.resetmail),
                    "postgres": round3(self.relay_fast.cpu.postgres),
                    "rabbitmq": round3(self.relay_fast.cpu.rabbitmq),
                    "total": round3(self.relay_fast.cpu.service()),
                },
                "per_token_tx": {
                    "postgres": round3(token.postgres),
                    "client": round3(token.bench),
                    "total": round3(self.tokens.cpu_ms()),
                },
            },
            "e2e": end_to_end_json(e),
            "per_email": per_email::json(self),
            "memory": run_json(&self.memory),
            "peak_rss_mb": {
                "api": round(self.api_rss),
                "worker": round(w.rss_mb),
                "worker_1000_in_flight": round(self.memory.rss_mb),
            },
            "targets": {
                "api_ratio_ge_0_85": targets.api_ratio,
                "api_p99_64_lt_20ms": targets.api_p99,
                "worker_ratio_ge_0_8": targets.worker_ratio,
                "relay_200ms_ge_1000_per_s": targets.slow_rate,
                "relay_200ms_pg_le_16": targets.slow_pg,
                "relay_200ms_ge_0_9_of_0ms": targets.slow_vs_fast,
                "worker_0ms_ge_0_8_token_tx": targets.fast_vs_tokens,
                "e2e_p99_lt_50ms": targets.e2e_p99,
                "api_rss_lt_40mb": targets.api_rss,
                "worker_rss_lt_60mb": targets.worker_rss,
                "worker_rss_1000_in_flight_lt_60mb": targets.worker_rss_in_flight,
            },
        })
    }
}

fn settings_json(run: &WorkerRun) -> Value {
    json!({
        "concurrency": run.settings.concurrency,
        "smtp_connections": run.settings.smtp_connections,
        "db_pool_size": run.settings.db_pool_size,
    })
}

fn run_json(run: &WorkerRun) -> Value {
    json!({
        "settings": settings_json(run),
        "delay_ms": run.relay_delay.as_millis() as u64,
        "jobs": run.jobs,
        "accepted": run.accepted,
        "finished": run.finished,
        "seconds": round(run.elapsed.as_secs_f64()),
        "emails_per_s": round(run.rate),
        "pg_connections_peak": run.pg.open,
        "pg_busy_peak": run.pg.busy,
        "smtp_connections_peak": run.smtp.peak_connections,
        "smtp_connections_opened": run.smtp.opened,
        "in_flight_peak": run.smtp.peak_in_flight,
        "worker_rss_mb": round(run.rss_mb),
    })
}

/// The end-to-end run's lines.
pub fn print_end_to_end(e: &EndToEnd) {
    let pace = match e.pace {
        Pace::Half {
            api_peak,
            worker_rate,
        } => format!(
            "half of min(api peak {api_peak:.0}/s, worker with {} at 0 ms {worker_rate:.0}/s)",
            e.settings.describe()
        ),
        Pace::Fixed(_) => format!("BENCH_E2E_RATE, worker with {}", e.settings.describe()),
    };
    println!(
        "end to end at {:.0} req/s ({pace}): p50 {:.2} ms, p99 {:.2} ms (target < 50 ms: {}) ({} \
         requests, {} not answered 0, {} never emailed)",
        e.rate,
        e.p50_ms,
        e.p99_ms,
        met(e.met()),
        e.requests,
        e.failed,
        e.missing
    );
    println!(
        "  after a warm-up of {} requests at the same rate, not counted (their p99: {:.2} ms)",
        e.warm_up_requests, e.warm_up_p99_ms
    );
    println!(
        "  of which: request due → api answered (publish confirmed) p50 {:.2} ms, p99 {:.2} ms; \
         api answered → email accepted p50 {:.2} ms, p99 {:.2} ms",
        e.answered_p50_ms, e.answered_p99_ms, e.after_answer_p50_ms, e.after_answer_p99_ms
    );
    let s = &e.stages;
    println!(
        "  the worker's means per job after the warm-up (its metrics): arrival → settled {:.2} ms, \
         of which waiting for the claim {:.2} ms, the SMTP send {:.2} ms, waiting for the record \
         {:.2} ms",
        s.job.mean_ms(),
        s.claim.mean_ms(),
        s.send.mean_ms(),
        s.record.mean_ms()
    );
}

/// The end-to-end run's figures as JSON.
pub fn end_to_end_json(e: &EndToEnd) -> Value {
    let (api_peak, worker_rate) = match e.pace {
        Pace::Half {
            api_peak,
            worker_rate,
        } => (Some(round(api_peak)), Some(round(worker_rate))),
        Pace::Fixed(_) => (None, None),
    };
    json!({
        "offered_rps": round(e.rate),
        "api_peak_rps": api_peak,
        "worker_rate": worker_rate,
        "worker_settings": e.settings.describe(),
        "requests": e.requests,
        "non_zero": e.failed,
        "never_emailed": e.missing,
        "p50_ms": round(e.p50_ms),
        "p99_ms": round(e.p99_ms),
        "answered_p50_ms": round(e.answered_p50_ms),
        "answered_p99_ms": round(e.answered_p99_ms),
        "after_answer_p50_ms": round(e.after_answer_p50_ms),
        "after_answer_p99_ms": round(e.after_answer_p99_ms),
        "warm_up_requests": e.warm_up_requests,
        "warm_up_p99_ms": round(e.warm_up_p99_ms),
        "worker_job_mean_ms": round(e.stages.job.mean_ms()),
        "worker_claim_mean_ms": round(e.stages.claim.mean_ms()),
        "worker_send_mean_ms": round(e.stages.send.mean_ms()),
        "worker_record_mean_ms": round(e.stages.record.mean_ms()),
        "target_p99_lt_50ms": e.met(),
    })
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

fn show_cpu(split: &[(String, f64)]) -> String {
    split
        .iter()
        .map(|(name, ms)| format!("{name} {ms:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}
