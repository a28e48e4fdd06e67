//! The api's operator commands: `migrate` and `user add`.

use anyhow::Context as _;
use resetmail_shared::{
    EmailAddress,
    config::{AccountSource, DatabaseConfig},
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
    /// Succeed without changes when an account with this address exists (for scripts).
    #[arg(long)]
    pub exists_ok: bool,
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|error| error.is_unique_violation())
}

/// Creates the database if needed and applies pending migrations.
pub async fn migrate(config: &DatabaseConfig) -> anyhow::Result<()> {
    let pool = db::connect(config).await?;
    pool.close().await;
    println!("migrations applied");
    Ok(())
}

/// Adds an account.
pub async fn add_user(config: &DatabaseConfig, args: &AddUser) -> anyhow::Result<()> {
    if config.accounts == AccountSource::Cloudreve {
        anyhow::bail!(
            "RESETMAIL_ACCOUNT_SOURCE=cloudreve: accounts are the Cloudreve site's; add them in Cloudreve"
        );
    }
    let email =
        EmailAddress::parse(&args.email).map_err(|error| anyhow::anyhow!("--email: {error}"))?;
    let pool = db::connect(config).await?;
    let new_user = NewUser {
        email: email.as_str(),
        nick: args.nick.as_deref(),
        language: args.language.as_deref(),
        status: args.status,
    };
    let inserted = users::insert(&pool, &new_user).await;
    pool.close().await;
    match inserted {
        Ok(user) => {
            println!(
                "added account {} ({}), status {}",
                user.id, user.email, user.status
            );
            Ok(())
        }
        Err(error) if is_unique_violation(&error) && args.exists_ok => {
            println!(
                "an account with the address {} exists already; left as it is",
                email.as_str()
            );
            Ok(())
        }
        Err(error) if is_unique_violation(&error) => {
            anyhow::bail!(
                "an account with the address {} exists already",
                email.as_str()
            )
        }
        Err(error) => Err(error).context("cannot add the account"),
    }
}
