//! The database: connecting (creating it if missing), migrations, and the queries both binaries use.

pub mod captcha_tickets;
pub mod claims;
pub mod cloudreve;
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

use crate::config::{AccountSource, DatabaseConfig};

/// The migrations in `migrations/`, built into both binaries.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// The migrations of resetmail's own tables beside a Cloudreve site's, in `migrations/cloudreve/`.
pub static CLOUDREVE_MIGRATOR: Migrator = sqlx::migrate!("../migrations/cloudreve");

/// The schema resetmail's tables live in, in a Cloudreve site's database.
pub const CLOUDREVE_MODE_SCHEMA: &str = "resetmail";

/// Rows a prune deletes per statement: each batch is a short transaction of its own, so a large
/// backlog neither holds locks for long nor writes its WAL in one burst.
const PRUNE_BATCH: i64 = 5_000;

/// Runs the delete that `batch(limit)` builds until it deletes fewer than `limit` rows; the total.
async fn delete_in_batches<'q>(
    pool: &PgPool,
    batch: impl Fn(i64) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> sqlx::Result<u64> {
    let mut total = 0;
    loop {
        let deleted = batch(PRUNE_BATCH).execute(pool).await?.rows_affected();
        total += deleted;
        if deleted < PRUNE_BATCH.unsigned_abs() {
            return Ok(total);
        }
    }
}

/// How long to wait for a pooled connection before the caller's work fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects and applies pending migrations. With built-in accounts the database is created if it is
/// missing; in Cloudreve mode it must be a Cloudreve site's, and resetmail's tables go in a schema
/// of their own there.
pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    match config.accounts {
        AccountSource::Builtin => {
            create_if_missing(&config.url).await?;
            let pool = pool(config)?;
            migrate(&pool).await?;
            Ok(pool)
        }
        AccountSource::Cloudreve => {
            let pool = pool(config)?;
            cloudreve::check_tables(&pool).await?;
            let create = format!("CREATE SCHEMA IF NOT EXISTS {CLOUDREVE_MODE_SCHEMA}");
            sqlx::raw_sql(sqlx::AssertSqlSafe(create))
                .execute(&pool)
                .await
                .context("cannot create resetmail's schema in the Cloudreve database")?;
            CLOUDREVE_MIGRATOR
                .run(&pool)
                .await
                .context("cannot apply database migrations")?;
            Ok(pool)
        }
    }
}

async fn create_if_missing(url: &str) -> anyhow::Result<()> {
    let exists = sqlx::Postgres::database_exists(url)
        .await
        .context("cannot reach PostgreSQL")?;
    if !exists {
        // Two processes starting together may both try; the loser finds it there.
        match sqlx::Postgres::create_database(url).await {
            Ok(()) => tracing::info!("created the database"),
            Err(error) if !sqlx::Postgres::database_exists(url).await.unwrap_or(false) => {
                return Err(error).context("cannot create the database");
            }
            Err(_) => {}
        }
    }
    Ok(())
}

/// A pool for `config` that connects lazily (and reconnects after an outage by itself).
pub fn pool(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    let not_postgresql = match config.accounts {
        AccountSource::Builtin => "DATABASE_URL is not a PostgreSQL URL (postgres://…)",
        AccountSource::Cloudreve => {
            "DATABASE_URL is not a PostgreSQL URL (postgres://…): Cloudreve mode needs a Cloudreve site whose database is PostgreSQL"
        }
    };
    // sqlx reads any scheme as PostgreSQL's; a MySQL or SQLite URL must be told apart here.
    let scheme = config.url.split_once("://").map(|(scheme, _)| scheme);
    if !matches!(scheme, Some("postgres" | "postgresql")) {
        anyhow::bail!(not_postgresql);
    }
    let options: PgConnectOptions = config.url.parse().context(not_postgresql)?;
    // In Cloudreve mode every unqualified name is resetmail's own; Cloudreve's tables are always
    // named with their schema.
    let options = match config.accounts {
        AccountSource::Builtin => options,
        AccountSource::Cloudreve => options.options([("search_path", CLOUDREVE_MODE_SCHEMA)]),
    };
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
    sqlx::query!("SELECT 1 AS one")
        .fetch_one(pool)
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloudreve_mode_on_a_database_that_is_not_postgresql_says_so() {
        let config = DatabaseConfig {
            url: "mysql://cloudreve:secret@127.0.0.1:3306/cloudreve".into(),
            pool_size: 1,
            accounts: AccountSource::Cloudreve,
        };
        let error = pool(&config)
            .err()
            .map(|error| format!("{error:#}"))
            .unwrap_or_default();
        assert!(
            error.contains("Cloudreve mode needs a Cloudreve site whose database is PostgreSQL"),
            "{error}"
        );
        assert!(
            !error.contains("secret"),
            "the error repeats the URL: {error}"
        );
    }
}
