//! The api's operator commands: `migrate` and `user add`.

use anyhow::Context as _;
use resetmail_shared::{
    EmailAddress,
    config::DatabaseConfig,
    db::{
        self,
        users::{self, NewUser, UserStatus},
    },
};

/// Arguments of `resetmail-api user add`.
#[derive(clap::Args, Clone, Debug)]
pub struct AddUser {
    /// The account's address.
    #[arg(long)]
    pub email: String,
    /// Display name.
    #[arg(long)]
    pub nick: Option<String>,
    /// Preferred language, such as `en-US` or `zh-CN`.
    #[arg(long)]
    pub language: Option<String>,
    /// Account status.
    #[arg(long, value_enum, default_value_t = UserStatus::Active)]
    pub status: UserStatus,
}

/// Creates the database if needed and applies pending migrations.
pub async fn migrate(config: &DatabaseConfig) -> anyhow::Result<()> {
    let pool = db::connect(config).await?;
    pool.close().await;
    println!("migrations applied");
    Ok(())
}

/// Adds an account and prints its ids.
pub async fn add_user(config: &DatabaseConfig, args: &AddUser) -> anyhow::Result<()> {
    let email =
        EmailAddress::parse(&args.email).map_err(|error| anyhow::anyhow!("--email: {error}"))?;
    let pool = db::connect(config).await?;
    let user = users::insert(
        &pool,
        &NewUser {
            email: email.as_str(),
            nick: args.nick.as_deref(),
            language: args.language.as_deref(),
            status: args.status,
        },
    )
    .await
    .context("cannot add the account (does one with this address exist already?)")?;
    pool.close().await;
    println!(
        "added account {} ({}), status {}, public id {}",
        user.id, user.email, user.status, user.public_id
    );
    Ok(())
}
