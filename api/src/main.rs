//! resetmail-api: serve the reset endpoint, or run an operator command.

use clap::{Parser, Subcommand};
use resetmail_api::{commands, config::ApiConfig};
use tokio_util::sync::CancellationToken;

/// The HTTP api of resetmail: checks reset requests and queues them for the worker.
#[derive(Parser)]
#[command(name = "resetmail-api", version, about)]
struct Cli {
    #[command(flatten)]
    config: ApiConfig,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the api (the default).
    Serve,
    /// Create the database if missing and apply pending migrations.
    Migrate,
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add an account (for demos and small sites; larger sites sync `users` themselves).
    Add(commands::AddUser),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    resetmail_shared::telemetry::init(&cli.config.log);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let shutdown = CancellationToken::new();
            tokio::spawn(resetmail_shared::shutdown::on_signal(shutdown.clone()));
            resetmail_api::run(cli.config, shutdown).await
        }
        Command::Migrate => commands::migrate(&cli.config.database).await,
        Command::User(UserCommand::Add(args)) => {
            commands::add_user(&cli.config.database, &args).await
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
