//! The api phase: `POST /api/v4/user/reset` from 1, 16 and 64 clients in a closed loop, each
//! round next to its baseline, a raw confirmed publish of the same job.

use std::{net::SocketAddr, time::Duration};

use crate::{
    Options,
    load::{Figures, PublishClient, closed_loop, median},
    procfs::{self, Owners, PartsCpu, cpu_by_program, cpu_split},
    run::{Run, http_clients},
};

/// The api's client counts.
const CLIENTS: [usize; 3] = [1, 16, 64];

/// One api concurrency level: medians over the rounds, for the api and for the baseline.
pub struct ApiRow {
    pub clients: usize,
    pub api: Figures,
    pub baseline: Figures,
    /// CPU ms per request by program, in the last round: api, then baseline.
    pub api_cpu: Vec<(String, f64)>,
    pub baseline_cpu: Vec<(String, f64)>,
    /// CPU ms per request of the api run by part, in the last round: the api process and the
    /// RabbitMQ node the run uses.
    pub api_parts: PartsCpu,
}

impl ApiRow {
    pub fn ratio(&self) -> f64 {
        self.api.per_second / self.baseline.per_second
    }
}

fn medians(runs: &[Figures]) -> Figures {
    Figures {
        per_second: median(runs.iter().map(|f| f.per_second).collect()),
        p50_ms: median(runs.iter().map(|f| f.p50_ms).collect()),
        p99_ms: median(runs.iter().map(|f| f.p99_ms).collect()),
        count: runs.iter().map(|f| f.count).sum(),
        failed: runs.iter().map(|f| f.failed).sum(),
    }
}

pub async fn bench_api(
    run: &Run,
    options: &Options,
    api: SocketAddr,
) -> anyhow::Result<Vec<ApiRow>> {
    let (warmup, window) = (
        Duration::from_millis(500),
        Duration::from_secs_f64(options.seconds),
    );
    let mut rows = Vec::new();
    for clients in CLIENTS {
        let (mut api_runs, mut baseline_runs) = (Vec::new(), Vec::new());
        let (mut api_cpu, mut baseline_cpu) = (Vec::new(), Vec::new());
        let mut api_parts = PartsCpu::default();
        let owners = Owners {
            resetmail: run.pids(),
            bench: std::process::id(),
            not_ours: Default::default(),
            broker: run.broker_pids.clone(),
        };
        for round in 0..options.rounds {
            // Alternate which goes first, so a drift of the machine's load favours neither.
            for api_first in [round % 2 == 0, round % 2 != 0] {
                if api_first {
                    let http = http_clients(api, clients, &format!("a{clients}r{round}-")).await?;
                    let (before, snapshot) = (cpu_by_program(), procfs::cpu_snapshot());
                    let figures = closed_loop(http, warmup, window).await;
                    let units = requests(&figures, warmup);
                    api_cpu = cpu_split(&before, &cpu_by_program(), units);
                    api_parts =
                        PartsCpu::between(&snapshot, &procfs::cpu_snapshot(), units, &owners);
                    api_runs.push(figures);
                } else {
                    let publishers = (0..clients)
                        .map(|_| PublishClient {
                            channel: run.channel.clone(),
                            queue: run.topology.work_queue(),
                        })
                        .collect();
                    let before = cpu_by_program();
                    let figures = closed_loop(publishers, warmup, window).await;
                    baseline_cpu =
                        cpu_split(&before, &cpu_by_program(), requests(&figures, warmup));
                    baseline_runs.push(figures);
                }
                run.purge().await?;
            }
        }
        let row = ApiRow {
            clients,
            api: medians(&api_runs),
            baseline: medians(&baseline_runs),
            api_cpu,
            baseline_cpu,
            api_parts,
        };
        eprintln!(
            "api, {clients} clients: {:.0}/s vs baseline {:.0}/s",
            row.api.per_second, row.baseline.per_second
        );
        rows.push(row);
    }
    Ok(rows)
}

/// Requests a closed loop made in all, warm-up included (its figures count the window only).
fn requests(figures: &Figures, warmup: Duration) -> usize {
    figures.count + figures.failed + (figures.per_second * warmup.as_secs_f64()) as usize
}
