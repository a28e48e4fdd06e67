//! The worker's operator commands: `dlq …`, `status …` and `template preview`. Each writes what it
//! found to `out`, as a table for people or as JSON for scripts.

use std::io::Write;

use anyhow::{Context as _, bail};
use resetmail_shared::{
    EmailAddress,
    config::parse_duration,
    db::{self, deliveries},
    email::{mask, mask_addresses},
};
use time::{
    OffsetDateTime, UtcOffset,
    format_description::{BorrowedFormatItem, well_known::Rfc3339},
    macros::format_description,
};
use uuid::Uuid;

use crate::{
    config::WorkerConfig,
    dlq::{DeadLetter, Dlq},
    templates::{ResetEmailContext, Templates, valid_for},
};

/// `resetmail-worker dlq …`
#[derive(clap::Subcommand, Clone, Debug)]
pub enum DlqCommand {
    /// List dead letters without consuming them.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// JSON, one array.
        #[arg(long)]
        json: bool,
        /// Print addresses in full (masked by default, `j***@example.com`).
        #[arg(long)]
        show_addresses: bool,
    },
    /// Print one dead letter in full: headers and body.
    Show {
        /// The job id.
        job_id: Uuid,
        /// Print addresses in full (masked by default, `j***@example.com`).
        #[arg(long)]
        show_addresses: bool,
    },
    /// Move dead letters back to the work queue, attempt count reset.
    Replay {
        /// The job id to replay.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        job_id: Option<Uuid>,
        /// Every dead letter there is now.
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters: all, or those last attempted longer ago than a duration.
    Purge {
        /// Only those older than this (`7d`, `12h`).
        #[arg(long, value_parser = parse_duration)]
        older_than: Option<std::time::Duration>,
    },
}

/// `resetmail-worker status …`
#[derive(clap::Args, Clone, Debug)]
pub struct StatusArgs {
    /// Every request for this address.
    #[arg(long, required_unless_present_any = ["job", "correlation_id"], conflicts_with_all = ["job", "correlation_id"])]
    pub email: Option<String>,
    /// One job.
    #[arg(long, conflicts_with = "correlation_id")]
    pub job: Option<Uuid>,
    /// The jobs of one request.
    #[arg(long)]
    pub correlation_id: Option<Uuid>,
    /// JSON, one array.
    #[arg(long)]
    pub json: bool,
    /// Print addresses in full (masked by default, `j***@example.com`).
    #[arg(long)]
    pub show_addresses: bool,
}

/// `resetmail-worker template …`
#[derive(clap::Subcommand, Clone, Debug)]
pub enum TemplateCommand {
    /// Render the reset email with sample data (overrides from RESETMAIL_TEMPLATES_DIR included).
    Preview {
        /// Language, as an account would have it.
        #[arg(long, default_value = "en-US")]
        lang: String,
        /// Only the HTML part.
        #[arg(long, conflicts_with = "text")]
        html: bool,
        /// Only the text part.
        #[arg(long)]
        text: bool,
    },
}

/// Runs a `dlq` command.
pub async fn dlq(
    config: &WorkerConfig,
    command: &DlqCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let dlq = Dlq::open(&config.broker).await?;
    match command {
        DlqCommand::List {
            limit,
            json,
            show_addresses,
        } => {
            // Counted first: messages handed back are requeued by the broker a moment later.
            let total = dlq.count().await?;
            let letters = dlq.list(*limit).await?;
            let letters: Vec<_> = if *show_addresses {
                letters
            } else {
                letters.into_iter().map(DeadLetter::masked).collect()
            };
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&letters)?)?;
            } else {
                write_letters(out, &letters)?;
                writeln!(
                    out,
                    "{} shown, {} in the dead-letter queue",
                    letters.len(),
                    total
                )?;
            }
        }
        DlqCommand::Show {
            job_id,
            show_addresses,
        } => match dlq.show(*job_id).await? {
            Some(letter) => {
                let letter = if *show_addresses {
                    letter
                } else {
                    letter.masked()
                };
                writeln!(out, "{}", serde_json::to_string_pretty(&letter)?)?;
            }
            None => bail!("no dead letter for job {job_id}"),
        },
        DlqCommand::Replay { job_id, all } => {
            let pool = db::connect(&config.database).await?;
            if *all {
                let replayed = dlq.replay_all(&pool).await?;
                writeln!(out, "replayed {replayed} dead letters")?;
            } else if let Some(job_id) = job_id {
                if !dlq.replay_one(&pool, *job_id).await? {
                    bail!("no dead letter for job {job_id}");
                }
                writeln!(out, "replayed job {job_id}")?;
            }
        }
        DlqCommand::Purge { older_than } => {
            let purged = dlq.purge(*older_than).await?;
            writeln!(out, "purged {purged} dead letters")?;
        }
    }
    Ok(())
}

fn write_letters(out: &mut impl Write, letters: &[DeadLetter]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<36}  {:<24}  {:<9}  {:>8}  {:<20}  {:<20}  LAST ERROR",
        "JOB", "EMAIL", "CLASS", "ATTEMPTS", "FIRST ATTEMPT", "LAST ATTEMPT"
    )?;
    for letter in letters {
        let error: String = letter
            .last_error
            .as_deref()
            .unwrap_or("-")
            .chars()
            .take(60)
            .collect();
        writeln!(
            out,
            "{:<36}  {:<24}  {:<9}  {:>8}  {:<20}  {:<20}  {error}",
            letter.job_id.as_deref().unwrap_or("-"),
            letter.email.as_deref().unwrap_or("-"),
            letter.error_class,
            letter.attempts.map_or("-".into(), |n| n.to_string()),
            header_time(letter.first_attempt_at.as_deref()),
            header_time(letter.last_attempt_at.as_deref()),
        )?;
    }
    Ok(())
}

/// How tables print a time: UTC, to the second, always 20 characters (`2026-11-30 04:15:39Z`).
const TABLE_TIME: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");

/// A time for a table column.
fn table_time(at: OffsetDateTime) -> String {
    let at = at.to_offset(UtcOffset::UTC);
    at.format(TABLE_TIME).unwrap_or_else(|_| at.to_string())
}

/// A dead letter's RFC 3339 header for a table column (shown as it is if it does not parse).
fn header_time(at: Option<&str>) -> String {
    match at {
        None => "-".into(),
        Some(text) => OffsetDateTime::parse(text, &Rfc3339)
            .map(table_time)
            .unwrap_or_else(|_| text.to_owned()),
    }
}

/// A time for JSON: RFC 3339, in UTC.
fn json_time(at: OffsetDateTime) -> anyhow::Result<String> {
    Ok(at.to_offset(UtcOffset::UTC).format(&Rfc3339)?)
}

/// Runs `status`: the delivery history of an address, a job or a request.
pub async fn status(
    config: &WorkerConfig,
    args: &StatusArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let pool = db::connect(&config.database).await?;
    let rows = match (&args.email, args.job, args.correlation_id) {
        (Some(email), _, _) => {
            let email =
                EmailAddress::parse(email).map_err(|error| anyhow::anyhow!("--email: {error}"))?;
            deliveries::find_by_email(&pool, &email.match_key()).await?
        }
        (_, Some(job), _) => deliveries::find(&pool, job).await?.into_iter().collect(),
        (_, _, Some(correlation_id)) => {
            deliveries::find_by_correlation_id(&pool, correlation_id).await?
        }
        _ => bail!("give --email, --job or --correlation-id"),
    };
    // The operator typed the address for --email, but output may be pasted anywhere.
    let email = |email: &str| {
        if args.show_addresses {
            email.to_owned()
        } else {
            mask(email)
        }
    };
    let last_error = |error: &Option<String>| {
        error.as_deref().map(|error| {
            if args.show_addresses {
                error.to_owned()
            } else {
                mask_addresses(error)
            }
        })
    };
    if args.json {
        let rows = rows
            .iter()
            .map(|row| {
                Ok(serde_json::json!({
                    "job_id": row.job_id, "correlation_id": row.correlation_id,
                    "email": email(&row.email), "outcome": row.outcome.as_str(), "attempts": row.attempts,
                    "last_error": last_error(&row.last_error), "message_id": row.message_id,
                    "requested_at": json_time(row.requested_at)?,
                    "sent_at": row.sent_at.map(json_time).transpose()?,
                }))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<36}  {:<24}  {:<15}  {:>8}  {:<20}  {:<20}  MESSAGE-ID / LAST ERROR",
        "JOB", "EMAIL", "OUTCOME", "ATTEMPTS", "REQUESTED", "SENT"
    )?;
    for row in &rows {
        let detail = row
            .message_id
            .clone()
            .or_else(|| last_error(&row.last_error))
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<36}  {:<24}  {:<15}  {:>8}  {:<20}  {:<20}  {}",
            row.job_id,
            email(&row.email),
            row.outcome,
            row.attempts,
            table_time(row.requested_at),
            row.sent_at.map_or_else(|| "-".to_owned(), table_time),
            detail.chars().take(80).collect::<String>(),
        )?;
    }
    writeln!(out, "{} request(s)", rows.len())?;
    Ok(())
}

/// Runs `template preview`: the reset email in `lang` with sample data.
pub fn template(
    config: &WorkerConfig,
    command: &TemplateCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let TemplateCommand::Preview { lang, html, text } = command;
    let templates = Templates::load(config.templates_dir.as_deref(), &config.default_language)?;
    let chosen = templates.choose_language(Some(lang)).to_owned();
    let site = config.site(None)?;
    let context = ResetEmailContext {
        link: site.reset_link(Uuid::nil(), "SAMPLE-SECRET"),
        site_name: site.name,
        site_url: site.url,
        name: "Sample User".into(),
        email: "user@example.com".into(),
        valid_for: valid_for(config.token_ttl, &chosen),
    };
    let email = templates
        .render(&chosen, &context)
        .context("the template does not render")?;
    if *html {
        writeln!(out, "{}", email.html)?;
    } else if *text {
        writeln!(out, "{}", email.text)?;
    } else {
        writeln!(
            out,
            "Language: {chosen}\nSubject: {}\n\n--- text ---\n{}\n--- html ---\n{}",
            email.subject, email.text, email.html
        )?;
    }
    Ok(())
}
