//! Configuration both binaries read from the environment (or flags), with the defaults of the
//! README's configuration table.

use std::time::Duration;

/// Where the database is and how many connections to keep.
#[derive(clap::Args, Clone, Debug)]
pub struct DatabaseConfig {
    /// PostgreSQL URL; the database is created if it is missing.
    #[arg(
        id = "database_url",
        long = "database-url",
        value_name = "URL",
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/resetmail",
        hide_env_values = true
    )]
    pub url: String,
    /// Connections in the pool.
    #[arg(
        long = "db-pool-size",
        env = "RESETMAIL_DB_POOL_SIZE",
        default_value_t = 10
    )]
    pub pool_size: u32,
    /// Where accounts come from: resetmail's own `users` table, or a Cloudreve site's database
    /// (`DATABASE_URL` is then that database; resetmail keeps its own tables in the schema
    /// `resetmail` there).
    #[arg(
        long = "account-source",
        env = "RESETMAIL_ACCOUNT_SOURCE",
        value_enum,
        default_value_t = AccountSource::Builtin
    )]
    pub accounts: AccountSource,
}

/// Where accounts, and in Cloudreve mode the site's settings, come from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccountSource {
    /// resetmail's own `users` table (sites sync into it; `resetmail-api user add`).
    #[default]
    Builtin,
    /// A Cloudreve v4 site's own PostgreSQL database: its `users` and `settings` tables.
    Cloudreve,
}

/// Where the broker is and how the queues are named.
#[derive(clap::Args, Clone, Debug)]
pub struct BrokerConfig {
    /// RabbitMQ URL; for a cluster, one URL per node separated by commas (each process connects
    /// to one of them, in a random order, and moves to the next when its node is lost).
    #[arg(
        id = "amqp_url",
        long = "amqp-url",
        value_name = "URL",
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true,
        value_parser = SecretValue::new("AMQP_URL", crate::amqp::BrokerNodes::parse)
    )]
    pub nodes: crate::amqp::BrokerNodes,
    /// Prefix of every queue and exchange name.
    #[arg(
        long = "queue-prefix",
        env = "RESETMAIL_QUEUE_PREFIX",
        default_value = "resetmail"
    )]
    pub queue_prefix: String,
    /// Type of every queue (`classic` or `quorum`); it cannot change once the queues exist.
    #[arg(long = "queue-type", env = "RESETMAIL_QUEUE_TYPE", value_enum, default_value_t = QueueType::Classic)]
    pub queue_type: QueueType,
    /// Delays before each retry of a transient failure, one delay queue each; after the last, the
    /// job goes to the dead letters.
    #[arg(long = "retry-delays", env = "RESETMAIL_RETRY_DELAYS", default_value = "5s,30s,2m,10m,30m", value_parser = RetryDelays::parse)]
    pub retry_delays: RetryDelays,
}

/// The delays of the retry steps, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryDelays(pub Vec<Duration>);

impl RetryDelays {
    /// Reads `5s,30s,2m`: durations separated by commas; empty means no retries.
    pub fn parse(text: &str) -> Result<Self, String> {
        let delays = text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(parse_duration)
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(zero) = delays.iter().find(|delay| delay.is_zero()) {
            return Err(format!(
                "a retry delay must be longer than zero, got {zero:?}"
            ));
        }
        Ok(Self(delays))
    }
}

/// RabbitMQ type of every queue resetmail declares.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueType {
    /// Classic durable queue.
    Classic,
    /// Replicated quorum queues (RabbitMQ 3.10 or later): a delivery limit on the work queue, and
    /// dead-lettering between the queues at least once.
    Quorum,
}

/// How log lines are written.
#[derive(clap::Args, Clone, Debug)]
pub struct LogConfig {
    /// `pretty` for people, `json` for log collectors. Levels come from `RUST_LOG` (default `info`).
    #[arg(long = "log-format", env = "RESETMAIL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub format: LogFormat,
}

/// Log line format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, coloured when the output is a terminal.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// A duration as operators write it: `500ms`, `90s`, `5m`, `1h`, `30d`, or a sum such as `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; write e.g. 90s, 5m, 1h, 30d".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "`{text}`: expected a number; write e.g. 90s, 5m, 1h, 30d"
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}`: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ms" => {
                total += Duration::from_millis(number);
                rest = &rest[unit_len..];
                continue;
            }
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "" => return Err(format!("`{text}`: missing unit (ms, s, m, h or d)")),
            unit => {
                return Err(format!(
                    "`{text}`: unknown unit `{unit}` (ms, s, m, h or d)"
                ));
            }
        };
        let seconds = number
            .checked_mul(seconds_per_unit)
            .ok_or_else(|| format!("`{text}`: duration too large"))?;
        total = total
            .checked_add(Duration::from_secs(seconds))
            .ok_or_else(|| format!("`{text}`: duration too large"))?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Writes a duration the way [`parse_duration`] reads it, in its largest whole unit: `90s`, `5m`, `250ms`.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if millis >= size && millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

/// A clap value parser for a setting that may hold a password (a URL with credentials): its
/// error names the setting and says what is wrong, and never repeats the value, as clap's own
/// errors do.
#[derive(Clone, Copy)]
pub struct SecretValue<T> {
    name: &'static str,
    parse: fn(&str) -> Result<T, String>,
}

impl<T> SecretValue<T> {
    /// Reads the setting `name` with `parse`, whose error must not repeat the value either.
    pub const fn new(name: &'static str, parse: fn(&str) -> Result<T, String>) -> Self {
        Self { name, parse }
    }
}

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for SecretValue<T> {
    type Value = T;

    fn parse_ref(
        &self,
        _command: &clap::Command,
        _argument: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let invalid = |kind, reason: &str| {
            clap::Error::raw(kind, format!("invalid {}: {reason}\n", self.name))
        };
        let text = value
            .to_str()
            .ok_or_else(|| invalid(clap::error::ErrorKind::InvalidUtf8, "not valid UTF-8"))?;
        (self.parse)(text)
            .map_err(|reason| invalid(clap::error::ErrorKind::ValueValidation, &reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_operators_write_them() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn durations_are_written_in_their_largest_whole_unit() {
        for text in ["250ms", "5s", "90s", "2m", "1h", "30d", "1500ms"] {
            let duration = parse_duration(text).unwrap_or_default();
            assert_eq!(format_duration(duration), text);
        }
    }

    #[test]
    fn retry_delays_are_a_comma_separated_list() {
        let delays = RetryDelays::parse("5s, 30s,2m").map(|delays| delays.0);
        assert_eq!(
            delays,
            Ok(vec![
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(120)
            ])
        );
        assert_eq!(RetryDelays::parse(""), Ok(RetryDelays(Vec::new())));
        assert!(RetryDelays::parse("5s,0s").is_err());
        assert!(RetryDelays::parse("5s,soon").is_err());
    }

    #[test]
    fn malformed_durations_are_refused_with_a_reason() {
        for bad in ["", "10", "s", "5x", "-5s", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
