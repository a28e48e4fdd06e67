//! Prometheus metrics: one recorder per process, installed on first use, rendered as text by the
//! api's `/metrics` and the worker's.

use std::{sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Bucket bounds, in seconds, of every `*_seconds` histogram: from a fast publish to a slow SMTP relay.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often recorded histogram samples are folded into their buckets. Until then each sample is
/// kept, so a process nobody scrapes would keep every one it ever recorded.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed the first time this is called; when that is on a Tokio
/// runtime, a task folds its histograms' samples into their buckets every [`UPKEEP_INTERVAL`] for
/// as long as the runtime runs (scraping `/metrics` does it too).
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            // A fixed, valid bucket list cannot be refused; fall back to summaries if it ever were.
            let builder = match builder
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            {
                Ok(builder) => builder,
                Err(_) => PrometheusBuilder::new(),
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let handle = handle.clone();
                runtime.spawn(async move {
                    let mut every = tokio::time::interval(UPKEEP_INTERVAL);
                    loop {
                        every.tick().await;
                        handle.run_upkeep();
                    }
                });
            }
            handle
        })
        .clone()
}
