//! resetmail-worker: consume reset jobs and send the emails.

use clap::Parser;
use resetmail_worker::config::WorkerConfig;
use tokio_util::sync::CancellationToken;

/// The worker of resetmail: turns queued reset jobs into one-time tokens and emails.
#[derive(Parser)]
#[command(name = "resetmail-worker", version, about)]
struct Cli {
    #[command(flatten)]
    config: WorkerConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    resetmail_shared::telemetry::init(&cli.config.log);
    let shutdown = CancellationToken::new();
    tokio::spawn(resetmail_shared::shutdown::on_signal(shutdown.clone()));
    resetmail_worker::run(cli.config, shutdown).await
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
