//! The database: connecting (creating it if missing), migrations, and the queries both binaries use.

pub mod captcha_tickets;
pub mod deliveries;
pub mod tokens;
pub mod users;

use std::time::Duration;

use anyhow::Context as _;
use sqlx::{
    PgPool,
    migrate::{MigrateDatabase as _, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::DatabaseConfig;

/// The migrations in `migrations/`, built into both binaries.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// How long to wait for a pooled connection before the caller's work fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Creates the database if it is missing, connects, and applies pending migrations.
pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    let exists = sqlx::Postgres::database_exists(&config.url)
        .await
        .context("cannot reach PostgreSQL")?;
    if !exists {
        // Two processes starting together may both try; the loser finds it there.
        match sqlx::Postgres::create_database(&config.url).await {
            Ok(()) => tracing::info!("created the database"),
            Err(error)
                if !sqlx::Postgres::database_exists(&config.url)
                    .await
                    .unwrap_or(false) =>
            {
                return Err(error).context("cannot create the database");
            }
            Err(_) => {}
        }
    }
    let pool = pool(config)?;
    migrate(&pool).await?;
    Ok(pool)
}

/// A pool for `config` that connects lazily (and reconnects after an outage by itself).
pub fn pool(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = config
        .url
        .parse()
        .context("DATABASE_URL is not a PostgreSQL URL")?;
    Ok(PgPoolOptions::new()
        .max_connections(config.pool_size)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options))
}

/// Applies pending migrations; safe with several processes starting at once (sqlx takes a lock).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("cannot apply database migrations")
}

/// True when the database answers a trivial query.
pub async fn ping(pool: &PgPool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}
