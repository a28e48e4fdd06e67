//! `TestDb`: a database of its own for one test, migrated, dropped when the test ends.

use resetmail_shared::{
    config::{AccountSource, DatabaseConfig},
    db::users::{self, NewUser, User, UserStatus},
};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection, PgPool};
use uuid::Uuid;

/// The server tests create their databases on; `RESETMAIL_TEST_DATABASE_URL` overrides it.
pub fn server_url() -> String {
    std::env::var("RESETMAIL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A fresh, migrated database; dropped (connections and all) when this value is dropped.
pub struct TestDb {
    name: String,
    /// A pool on it.
    pub pool: PgPool,
    /// Its configuration, for the code under test.
    pub config: DatabaseConfig,
}

impl TestDb {
    /// Creates and migrates a database named after a new UUID.
    pub async fn new() -> TestDb {
        let name = format!("resetmail_test_{}", Uuid::new_v4().simple());
        let url = format!("{}/{}", server_url().trim_end_matches('/'), name);
        let config = DatabaseConfig {
            url,
            pool_size: 10,
            accounts: AccountSource::Builtin,
        };
        let pool = resetmail_shared::db::connect(&config)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "cannot create the test database on {}: {error:#}",
                    server_url()
                )
            });
        TestDb { name, pool, config }
    }

    /// Adds an account.
    pub async fn add_user(
        &self,
        email: &str,
        nick: Option<&str>,
        language: Option<&str>,
        status: UserStatus,
    ) -> User {
        users::insert(
            &self.pool,
            &NewUser {
                email,
                nick,
                language,
                status,
            },
        )
        .await
        .unwrap_or_else(|error| panic!("cannot add {email}: {error}"))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        drop_database(self.name.clone());
    }
}

/// Drops the database `name` on the test server, from `Drop` (even after a panic): the pool belongs
/// to the test's runtime, which is blocked there, so `FORCE` ends its connections.
pub(crate) fn drop_database(name: String) {
    crate::run_to_completion(async move {
        let url = format!("{}/postgres", server_url().trim_end_matches('/'));
        if let Ok(mut connection) = PgConnection::connect(&url).await {
            let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
            let _ = sqlx::raw_sql(AssertSqlSafe(drop))
                .execute(&mut connection)
                .await;
            let _ = connection.close().await;
        }
    });
}
