//! resetmail-worker: consume reset jobs and send the emails, or run an operator command.

use clap::{Parser, Subcommand};
use resetmail_worker::{
    commands::{self, DlqCommand, StatusArgs, TemplateCommand},
    config::WorkerConfig,
};
use tokio_util::sync::CancellationToken;

/// The worker of resetmail: turns queued reset jobs into one-time tokens and emails.
#[derive(Parser)]
#[command(name = "resetmail-worker", version, about)]
struct Cli {
    #[command(flatten)]
    config: WorkerConfig,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Consume jobs (the default).
    Serve,
    /// Inspect, replay or purge the dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// What happened to the reset requests of an address, a job or a request.
    Status(StatusArgs),
    /// Check the email templates.
    #[command(subcommand)]
    Template(TemplateCommand),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    resetmail_shared::telemetry::init(&cli.config.log);
    // Not locked: a lock held across the awaits below would stop every log line (all go to stderr,
    // but a writer that ever took stdout would wait on it forever).
    let mut out = std::io::stdout();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let shutdown = CancellationToken::new();
            tokio::spawn(resetmail_shared::shutdown::on_signal(shutdown.clone()));
            resetmail_worker::run(cli.config, shutdown).await
        }
        Command::Dlq(command) => commands::dlq(&cli.config, &command, &mut out).await,
        Command::Status(args) => commands::status(&cli.config, &args, &mut out).await,
        Command::Template(command) => commands::template(&cli.config, &command, &mut out),
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
