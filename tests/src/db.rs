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

/// A login role of the test's own on a [`TestDb`], allowed only a few connections at once
/// (`CONNECTION LIMIT`), with every right on the database's tables; dropped when this value is.
pub struct TestDbRole {
    name: String,
    database: String,
    /// The database's configuration, connecting as this role.
    pub config: DatabaseConfig,
}

impl TestDb {
    /// A role that may hold at most `limit` connections at once.
    pub async fn role_with_connection_limit(&self, limit: u32) -> TestDbRole {
        let name = format!("resetmail_role_{}", Uuid::new_v4().simple());
        let statements = [
            format!("CREATE ROLE {name} LOGIN CONNECTION LIMIT {limit}"),
            format!("GRANT ALL ON ALL TABLES IN SCHEMA public TO {name}"),
            format!("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {name}"),
            format!("GRANT ALL ON SCHEMA public TO {name}"),
        ];
        for statement in statements {
            sqlx::raw_sql(AssertSqlSafe(statement.clone()))
                .execute(&self.pool)
                .await
                .unwrap_or_else(|error| panic!("{statement}: {error}"));
        }
        let mut config = self.config.clone();
        config.url = format!(
            "{}/{}",
            server_url()
                .trim_end_matches('/')
                .replacen("postgres@", &format!("{name}@"), 1),
            self.name
        );
        assert!(
            config.url.contains(&name),
            "cannot put the role in {}",
            server_url()
        );
        TestDbRole {
            name,
            database: self.name.clone(),
            config,
        }
    }
}

impl Drop for TestDbRole {
    fn drop(&mut self) {
        let (name, database) = (self.name.clone(), self.database.clone());
        crate::run_to_completion(async move {
            let server = server_url();
            let server = server.trim_end_matches('/');
            // Its rights in the test's database first: a role with rights cannot be dropped.
            if let Ok(mut connection) = PgConnection::connect(&format!("{server}/{database}")).await
            {
                let drop = format!("DROP OWNED BY {name}");
                let _ = sqlx::raw_sql(AssertSqlSafe(drop))
                    .execute(&mut connection)
                    .await;
                let _ = connection.close().await;
            }
            if let Ok(mut connection) = PgConnection::connect(&format!("{server}/postgres")).await {
                let drop = format!("DROP ROLE IF EXISTS {name}");
                let _ = sqlx::raw_sql(AssertSqlSafe(drop))
                    .execute(&mut connection)
                    .await;
                let _ = connection.close().await;
            }
        });
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
