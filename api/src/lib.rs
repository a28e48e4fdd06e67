//! resetmail-api: checks a password reset request (captcha, email) and queues a job for the worker,
//! answering at once with Cloudreve's envelope.

pub mod captcha;
pub mod commands;
pub mod config;
pub mod correlation;
pub mod envelope;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod password;
pub mod publisher;
pub mod rate_limit;
pub mod routes;
pub mod timeout;

use std::{
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    Router,
    extract::DefaultBodyLimit,
    middleware,
    routing::{get, patch, post},
};
use resetmail_shared::{config::AccountSource, shutdown::every};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::limit::ConcurrencyLimitLayer;

use crate::{
    captcha::Captcha, config::ApiConfig, error::ApiError, publisher::Publisher,
    rate_limit::RateLimiter,
};

/// What every request handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The api's configuration.
    pub config: Arc<ApiConfig>,
    /// The database (readiness now; captcha tickets and redeeming later).
    pub pool: PgPool,
    /// Queues jobs.
    pub publisher: Publisher,
    /// The captcha in force; replaced whole when a Cloudreve site's captcha settings change.
    pub captcha: Arc<RwLock<Arc<Captcha>>>,
    /// Per-client rate limits.
    pub rate_limiter: Arc<RateLimiter>,
    /// Where accounts are, and how links name them.
    pub accounts: resetmail_shared::db::users::Accounts,
    /// Renders the process's metrics.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

impl AppState {
    /// The captcha in force now; a request keeps the one it started with.
    pub fn captcha(&self) -> Arc<Captcha> {
        self.captcha
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The full router: api routes under the base path, health routes at the root.
pub fn router(state: AppState) -> Router {
    let base = state.config.base_path.trim_end_matches('/').to_owned();
    let api = Router::new()
        .route("/user/reset", post(routes::reset::send_reset))
        .route("/user/reset/{id}", patch(routes::redeem::redeem_reset))
        .route("/site/captcha", get(routes::captcha::get_captcha))
        .route("/openapi.json", get(routes::openapi::get_openapi))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            rate_limit::limit,
        ))
        .route_layer(middleware::from_fn(metrics::track));
    let api = if base.is_empty() {
        api
    } else {
        Router::new().nest(&base, api)
    };
    let operations = Router::new()
        .route("/healthz", get(routes::health::get_healthz))
        .route("/readyz", get(routes::health::get_readyz))
        .route("/metrics", get(metrics::get_metrics))
        .route_layer(middleware::from_fn(metrics::track));
    api.merge(operations)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(config::BODY_LIMIT_BYTES))
        // Inside `correlate` (the outermost layer), so a timed-out request's answer carries its id.
        .layer(middleware::from_fn_with_state(
            state.config.request_timeout,
            timeout::limit_time,
        ))
        .layer(ConcurrencyLimitLayer::new(
            state.config.max_concurrent_requests as usize,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            correlation::correlate,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Serves `state` on `listener` until `shutdown` fires, then finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("the HTTP server failed")
}

/// Runs the api as configured: binds `RESETMAIL_HTTP_ADDR`, builds the api and serves it.
pub async fn run(config: ApiConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.http_addr))?;
    Api::build(config, &shutdown)
        .await?
        .run_with_listener(listener, shutdown)
        .await
}

/// The api built from its configuration — database (created and migrated), captcha, broker
/// publisher, rate limiter, the tasks that tidy them until shutdown — and not serving yet: what
/// `run` serves, and what tests serve on a listener of their own.
pub struct Api {
    state: AppState,
    /// Stops the publisher once the server has stopped, so requests in flight can still publish.
    publisher_shutdown: CancellationToken,
}

impl Api {
    /// Builds the api; its background tasks stop on `shutdown`.
    pub async fn build(config: ApiConfig, shutdown: &CancellationToken) -> anyhow::Result<Self> {
        let pool = resetmail_shared::db::connect(&config.database).await?;
        let captcha = Arc::new(RwLock::new(Arc::new(captcha_for(&config, &pool).await?)));
        if config.database.accounts == AccountSource::Cloudreve {
            follow_site_captcha(&config, &pool, captcha.clone(), shutdown.clone()).await?;
        }
        tokio::spawn(prune_captcha_tickets(pool.clone(), shutdown.clone()));
        let publisher_shutdown = CancellationToken::new();
        let publisher = Publisher::start(
            &config.broker,
            config.publish_timeout,
            publisher_shutdown.clone(),
        );
        let rate_limiter = Arc::new(RateLimiter::new(&config.rate_limit));
        tokio::spawn(forget_idle_clients(rate_limiter.clone(), shutdown.clone()));
        let metrics = resetmail_shared::metrics::handle();
        metrics::register(&config.base_path);
        let accounts =
            resetmail_shared::db::users::Accounts::load(&pool, config.database.accounts).await?;
        let state = AppState {
            config: Arc::new(config),
            pool,
            publisher,
            captcha,
            rate_limiter,
            accounts,
            metrics,
        };
        Ok(Self {
            state,
            publisher_shutdown,
        })
    }

    /// Its broker publisher (tests wait for it to connect).
    pub fn publisher(&self) -> Publisher {
        self.state.publisher.clone()
    }

    /// Serves on `listener` until `shutdown` fires, then lets the requests in flight finish, at
    /// most `RESETMAIL_SHUTDOWN_TIMEOUT`, and stops the publisher.
    pub async fn run_with_listener(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let bound = listener
            .local_addr()
            .context("the listener has no address")?;
        let config = self.state.config.clone();
        tracing::info!(http.addr = %bound, base_path = %config.base_path, "resetmail-api listening");
        let limit = config.shutdown_timeout;
        let served = serve(listener, self.state, shutdown.clone());
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(limit).await;
        };
        let result = tokio::select! {
            result = served => result,
            () = deadline => {
                tracing::warn!(limit_ms = limit.as_millis() as u64, "requests still in flight at the shutdown time limit; stopping anyway");
                Ok(())
            }
        };
        self.publisher_shutdown.cancel();
        result
    }
}

/// The captcha in force: resetmail's settings, and in Cloudreve mode the site's for what they leave
/// unset (read once, at start-up).
pub async fn captcha_for(config: &ApiConfig, pool: &PgPool) -> anyhow::Result<Captcha> {
    let captcha = match config.database.accounts {
        AccountSource::Builtin => config.captcha.clone(),
        AccountSource::Cloudreve => {
            let site = resetmail_shared::db::cloudreve::site_settings(pool)
                .await
                .context("cannot read the Cloudreve site's settings")?;
            config.captcha.with_site(&site)
        }
    };
    Captcha::from_config(&captcha)
}

/// Reads the Cloudreve site's captcha settings again every `RESETMAIL_SETTINGS_REFRESH` and on
/// SIGHUP, until `shutdown`, and replaces the captcha in force when they change.
async fn follow_site_captcha(
    config: &ApiConfig,
    pool: &PgPool,
    slot: Arc<RwLock<Arc<Captcha>>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let known = resetmail_shared::db::cloudreve::site_settings(pool)
        .await
        .context("cannot read the Cloudreve site's settings")?;
    // Listening before the api says it is up: an early SIGHUP must not end it.
    let hangups = resetmail_shared::shutdown::hangups();
    let captcha_config = config.captcha.clone();
    tokio::spawn(resetmail_shared::db::cloudreve::follow(
        pool.clone(),
        config.settings_refresh,
        hangups,
        shutdown,
        known,
        move |settings| {
            let captcha = Captcha::from_config(&captcha_config.with_site(settings))?;
            tracing::info!(captcha = ?captcha.kind(), "captcha for \"forgot password\"");
            *slot.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(captcha);
            Ok(())
        },
    ));
    Ok(())
}

/// Deletes expired captcha tickets every minute until `shutdown`.
async fn prune_captcha_tickets(pool: PgPool, shutdown: CancellationToken) {
    every(Duration::from_secs(60), &shutdown, || async {
        match resetmail_shared::db::captcha_tickets::prune(&pool).await {
            Ok(0) => {}
            Ok(pruned) => tracing::debug!(pruned, "expired captcha tickets deleted"),
            Err(error) => tracing::warn!(%error, "cannot prune captcha tickets"),
        }
    })
    .await;
}

/// Drops the rate-limit state of clients that have been quiet, every minute until `shutdown`.
async fn forget_idle_clients(limiter: Arc<RateLimiter>, shutdown: CancellationToken) {
    every(Duration::from_secs(60), &shutdown, || async {
        limiter.forget_idle()
    })
    .await;
}
