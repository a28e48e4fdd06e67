//! resetmail-worker: consumes reset jobs, issues one-time tokens and sends the reset emails.

pub mod commands;
pub mod config;
pub mod consumer;
pub mod dlq;
pub mod health;
pub mod mailer;
pub mod metrics;
pub mod reset;
pub mod settle;
pub mod templates;

use std::sync::Arc;

use anyhow::Context as _;
use lettre::message::Mailbox;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use resetmail_shared::{config::AccountSource, db::users::Accounts};

use crate::{config::WorkerConfig, mailer::Mailer, templates::Templates};

/// Everything a job needs; shared by the tasks that handle jobs.
pub struct Worker {
    /// The worker's configuration.
    pub config: WorkerConfig,
    pool: PgPool,
    mailer: Mailer,
    templates: Templates,
    from: Mailbox,
    site: config::Site,
    accounts: Accounts,
    message_id_domain: String,
    /// Whether the worker is consuming now.
    pub health: Arc<health::Health>,
}

impl Worker {
    /// Checks the configuration and compiles the templates; any problem stops the worker here.
    pub fn new(
        config: WorkerConfig,
        pool: PgPool,
        accounts: Accounts,
        site: config::Site,
    ) -> anyhow::Result<Self> {
        let templates = Templates::load(config.templates_dir.as_deref(), &config.default_language)?;
        let from: Mailbox = config
            .mail_from
            .parse()
            .context("RESETMAIL_MAIL_FROM is not an address")?;
        let mailer = Mailer::new(
            config.smtp_url.as_deref(),
            &config.outbox_dir,
            config.smtp_timeout,
            usize::from(config.concurrency),
        )?;
        let message_id_domain = from.email.domain().to_owned();
        Ok(Self {
            config,
            pool,
            mailer,
            templates,
            from,
            site,
            accounts,
            message_id_domain,
            health: Arc::new(health::Health::default()),
        })
    }
}

/// Runs the worker as configured until `shutdown` fires.
pub async fn run(mut config: WorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Each job in flight holds one connection from its first statement to its commit.
    config.database.pool_size = config
        .database
        .pool_size
        .max(u32::from(config.concurrency) + 1);
    let pool = resetmail_shared::db::connect(&config.database).await?;
    let accounts = Accounts::load(&pool, config.database.accounts).await?;
    let cloudreve = match config.database.accounts {
        AccountSource::Builtin => None,
        AccountSource::Cloudreve => Some(
            resetmail_shared::db::cloudreve::site_settings(&pool)
                .await
                .context("cannot read the Cloudreve site's settings")?,
        ),
    };
    let site = config.site(cloudreve.as_ref())?;
    tracing::info!(accounts = ?config.database.accounts, site.url = %site.url, site.name = %site.name, "site");
    let worker = Worker::new(config, pool, accounts, site)?;
    match &worker.config.smtp_url {
        Some(_) => tracing::info!("sending email over SMTP"),
        None => tracing::warn!(
            outbox = %worker.config.outbox_dir.display(),
            "NO SMTP SERVER CONFIGURED (RESETMAIL_SMTP_URL): reset emails are written as .eml files to the outbox, not sent"
        ),
    }
    tracing::info!(languages = ?worker.templates.languages(), "templates compiled and test-rendered");
    tokio::spawn(prune(
        worker.pool.clone(),
        worker.config.retention,
        shutdown.clone(),
    ));
    // Installed before the first job, so that no count is lost, with or without the HTTP port.
    let metrics = resetmail_shared::metrics::handle();
    metrics::register(worker.config.broker.retry_delays.0.len());
    if let Some(listener) = bind_http(&worker.config.http_addr).await? {
        let probe = health::Probe {
            health: worker.health.clone(),
            pool: worker.pool.clone(),
            metrics,
        };
        tokio::spawn(health::serve(listener, probe, shutdown.clone()));
    }
    consumer::consume(Arc::new(worker), shutdown).await;
    Ok(())
}

/// Deletes what is no longer needed, at start and then every hour until `shutdown`: delivery rows
/// older than the retention, and tokens that can no longer be redeemed. Every worker runs it; the
/// deletes are idempotent.
async fn prune(pool: PgPool, retention: std::time::Duration, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        match prune_once(&pool, retention).await {
            Ok((rows, tokens)) => tracing::info!(
                deliveries.pruned = rows,
                tokens.pruned = tokens,
                "old records pruned"
            ),
            Err(error) => tracing::warn!(%error, "cannot prune old records"),
        }
    }
}

/// One pruning pass; returns the delivery rows and tokens deleted.
pub async fn prune_once(pool: &PgPool, retention: std::time::Duration) -> sqlx::Result<(u64, u64)> {
    let rows = resetmail_shared::db::deliveries::prune(pool, retention).await?;
    let tokens = resetmail_shared::db::tokens::prune(pool).await?;
    Ok((rows, tokens))
}

/// Binds the worker's HTTP port. A taken address is an error, so that a health check probing the
/// configured port never checks another process; `:0` takes any free port (several workers on one
/// host), logged.
async fn bind_http(address: &str) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    if address.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let wanted: std::net::SocketAddr = address
        .parse()
        .context("RESETMAIL_WORKER_HTTP_ADDR is not an address")?;
    let listener = tokio::net::TcpListener::bind(wanted)
        .await
        .with_context(|| {
            format!("cannot serve /healthz on {wanted} (RESETMAIL_WORKER_HTTP_ADDR; `:0` takes any free port, `off` none)")
        })?;
    let bound = listener.local_addr()?;
    tracing::info!(http.addr = %bound, "serving /healthz, /readyz and /metrics");
    Ok(Some(listener))
}
