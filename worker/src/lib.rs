//! resetmail-worker: consumes reset jobs, issues one-time tokens and sends the reset emails.

pub mod acks;
pub mod cloudreve_mail;
pub mod commands;
pub mod config;
pub mod consumer;
pub mod dkim;
pub mod dlq;
pub mod health;
pub mod mailer;
pub mod metrics;
pub mod outcome;
pub mod reset;
pub mod settle;
pub mod site;
pub mod store;
pub mod templates;

use std::sync::{Arc, PoisonError, RwLock};

use anyhow::Context as _;
use resetmail_shared::{
    config::AccountSource,
    db::{claims::Rules, cloudreve, users::Accounts},
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{HttpAddr, WorkerConfig},
    mailer::Mailer,
    site::SiteConfig,
    templates::Templates,
};

/// Everything a job needs; shared by the tasks that handle jobs.
pub struct Worker {
    /// The worker's configuration.
    pub config: WorkerConfig,
    /// For everything but the jobs: the site's settings, pruning, the readiness probe.
    pool: PgPool,
    /// For the jobs: batched claims and records on lanes of their own.
    store: store::Store,
    templates: Templates,
    /// The site and its transport; replaced as a whole when the Cloudreve site's settings change.
    site: RwLock<Arc<SiteConfig>>,
    /// Whether the worker is consuming now.
    pub health: Arc<health::Health>,
}

impl Worker {
    /// Checks the configuration and compiles the templates (any problem stops the worker here),
    /// and starts the lanes of the job's database work, connecting as `pool` does.
    pub fn new(
        config: WorkerConfig,
        pool: PgPool,
        accounts: Accounts,
        site: SiteConfig,
    ) -> anyhow::Result<Self> {
        let templates = Templates::load(config.templates_dir.as_deref(), &config.default_language)?;
        let rules = Rules {
            job_max_age: config.job_max_age,
            cooldown: config.account_cooldown,
            daily_max: config.account_daily_max,
            lease: lease(config.smtp_timeout),
            notify_unknown: config.notify_unknown_addresses,
        };
        let store = store::Store::start(
            (*pool.connect_options()).clone(),
            job_lanes(config.database.pool_size),
            accounts,
            rules,
            config.token_ttl,
        );
        Ok(Self {
            config,
            pool,
            store,
            templates,
            site: RwLock::new(Arc::new(site)),
            health: Arc::new(health::Health::default()),
        })
    }

    /// The site as it is now; a job keeps the one it started with.
    pub fn site(&self) -> Arc<SiteConfig> {
        self.site
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace_site(&self, site: SiteConfig) {
        *self.site.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(site);
    }
}

/// How long a claimed job stays its claimer's: two send time limits (a send includes connecting)
/// and a margin, so that only a delivery whose worker died loses its lease.
pub fn lease(smtp_timeout: std::time::Duration) -> std::time::Duration {
    smtp_timeout * 2 + std::time::Duration::from_secs(5)
}

/// Connections of the pool for everything but the jobs (start-up, the site's settings, pruning,
/// the readiness probe).
const OTHER_CONNECTIONS: u32 = 2;

/// The lanes of the jobs' database work, out of `pool_size` connections in all.
fn job_lanes(pool_size: u32) -> usize {
    pool_size.saturating_sub(OTHER_CONNECTIONS).max(1) as usize
}

/// Runs the worker as configured until `shutdown` fires: binds `RESETMAIL_WORKER_HTTP_ADDR` (unless
/// `off`) first, so that a taken address stops it before anything else starts.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = bind_http(config.http_addr).await?;
    run_with_listener(config, listener, shutdown).await
}

/// Runs the worker until `shutdown` fires, serving `/healthz`, `/readyz` and `/metrics` on
/// `listener` when there is one: what `run` does, and what tests run on a listener of their own.
pub async fn run_with_listener(
    config: WorkerConfig,
    listener: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Installed before the lanes connect and the first job, so that no count is lost, with or
    // without the HTTP port.
    let metrics = resetmail_shared::metrics::handle();
    metrics::register(config.broker.retry_delays.0.len());
    // The jobs' lanes take the rest of `RESETMAIL_DB_POOL_SIZE`, whatever the concurrency.
    let mut others = config.database.clone();
    others.pool_size = config.database.pool_size.min(OTHER_CONNECTIONS);
    let pool = resetmail_shared::db::connect(&others).await?;
    let accounts = Accounts::load(&pool, config.database.accounts).await?;
    let cloudreve = match config.database.accounts {
        AccountSource::Builtin => None,
        AccountSource::Cloudreve => Some(
            cloudreve::site_settings(&pool)
                .await
                .context("cannot read the Cloudreve site's settings")?,
        ),
    };
    let site = SiteConfig::resolve(&config, cloudreve.as_ref())?;
    log_site(&site, config.database.accounts);
    let worker = Arc::new(Worker::new(config, pool, accounts, site)?);
    if let Some(settings) = cloudreve {
        // Listening before anything says the worker is up: an early SIGHUP must not end it.
        let hangups = resetmail_shared::shutdown::hangups();
        let follower = worker.clone();
        tokio::spawn(cloudreve::follow(
            worker.pool.clone(),
            worker.config.settings_refresh,
            hangups,
            shutdown.clone(),
            settings,
            move |settings| {
                let site = SiteConfig::resolve(&follower.config, Some(settings))?;
                log_site(&site, AccountSource::Cloudreve);
                follower.replace_site(site);
                Ok(())
            },
        ));
    }
    tracing::info!(languages = ?worker.templates.languages(), "templates compiled and test-rendered");
    tokio::spawn(prune(
        worker.pool.clone(),
        worker.config.retention,
        shutdown.clone(),
    ));
    if let Some(listener) = listener {
        let bound = listener.local_addr()?;
        tracing::info!(http.addr = %bound, "serving /healthz, /readyz and /metrics");
        let probe = health::Probe {
            health: worker.health.clone(),
            pool: worker.pool.clone(),
            metrics,
        };
        tokio::spawn(health::serve(listener, probe, shutdown.clone()));
    }
    consumer::consume(worker, shutdown).await;
    Ok(())
}

/// Deletes what is no longer needed, at start and then every hour until `shutdown`: delivery rows
/// older than the retention, and tokens that can no longer be redeemed. Every worker runs it; the
/// deletes are idempotent.
async fn prune(pool: PgPool, retention: std::time::Duration, shutdown: CancellationToken) {
    resetmail_shared::shutdown::every(std::time::Duration::from_secs(3600), &shutdown, || async {
        match prune_once(&pool, retention).await {
            Ok((rows, tokens)) => tracing::info!(
                deliveries.pruned = rows,
                tokens.pruned = tokens,
                "old records pruned"
            ),
            Err(error) => tracing::warn!(%error, "cannot prune old records"),
        }
    })
    .await;
}

/// One pruning pass; returns the delivery rows and tokens deleted.
pub async fn prune_once(pool: &PgPool, retention: std::time::Duration) -> sqlx::Result<(u64, u64)> {
    let rows = resetmail_shared::db::deliveries::prune(pool, retention).await?;
    let tokens = resetmail_shared::db::tokens::prune(pool).await?;
    Ok((rows, tokens))
}

/// Binds the worker's HTTP port. A taken address is an error, so that a health check probing the
/// configured port never checks another process; `:0` takes any free port (several workers on one
/// host; the address taken is logged once serving).
async fn bind_http(address: HttpAddr) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let HttpAddr(Some(wanted)) = address else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(wanted)
        .await
        .with_context(|| {
            format!("cannot serve /healthz on {wanted} (RESETMAIL_WORKER_HTTP_ADDR; `:0` takes any free port, `off` none)")
        })?;
    Ok(Some(listener))
}

/// Says where the emails go and for which site; loudly when they are only written to the outbox.
fn log_site(site: &SiteConfig, accounts: AccountSource) {
    tracing::info!(accounts = ?accounts, site.url = %site.site.url, site.name = %site.site.name, "site");
    match &site.mailer {
        Mailer::Smtp { .. } => tracing::info!("sending email over SMTP"),
        Mailer::Outbox { dir, .. } => tracing::warn!(
            outbox = %dir.display(),
            "NO SMTP SERVER CONFIGURED (RESETMAIL_SMTP_URL, or the Cloudreve site's smtpHost): reset emails are written as .eml files to the outbox, not sent"
        ),
    }
}
