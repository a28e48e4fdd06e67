//! The raw limits the worker is compared with, measured on the same machine in the same run: a bare
//! SMTP client into the sink, the token transaction alone on PostgreSQL, and (for reading) the
//! job's own database work alone.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use lettre::{
    Message,
    message::MultiPart,
    transport::smtp::{client::AsyncSmtpConnection, extension::ClientId},
};
use resetmail_shared::token::ResetToken;
use resetmail_testkit::smtp_sink::SmtpSink;
use sqlx::PgPool;

use crate::{
    job_transaction, pg_monitor,
    procfs::{self, Owners, PartsCpu},
};

/// The worker's default concurrency (`RESETMAIL_CONCURRENCY`): the baselines use as many
/// connections as the worker at default settings does.
pub const WORKER_CONCURRENCY: usize = 8;

/// A message like the worker's: the real templates, rendered for a bench account. (The worker
/// builds its message in a private method of its job handler, so this repeats its headers.)
fn sample_message(to: &str) -> anyhow::Result<Message> {
    let templates = resetmail_worker::templates::Templates::load(None, "en-US")?;
    let email = templates.render(
        "en-US",
        &resetmail_worker::templates::ResetEmailContext {
            site_name: "Cloudreve".into(),
            site_url: "http://localhost:5212".into(),
            name: "Bench user".into(),
            email: to.into(),
            link: resetmail_worker::config::Site {
                url: "http://localhost:5212".into(),
                name: "Cloudreve".into(),
            }
            .reset_link(uuid::Uuid::new_v4(), ResetToken::generate()?.secret()),
            valid_for: resetmail_worker::templates::valid_for(Duration::from_secs(3600), "en-US"),
        },
    )?;
    Ok(Message::builder()
        .from("Cloudreve <no-reply@localhost>".parse()?)
        .to(to.parse()?)
        .subject(email.subject)
        .message_id(Some(format!("<{}@localhost>", uuid::Uuid::new_v4())))
        .multipart(MultiPart::alternative_plain_html(email.text, email.html))?)
}

/// Emails per second of a bare SMTP client: `WORKER_CONCURRENCY` kept-alive connections with
/// `TCP_NODELAY`, the worker's message, nothing else.
pub async fn bare_smtp(sink: &SmtpSink, n: usize) -> anyhow::Result<f64> {
    sink.reset();
    let bytes = Arc::new(sample_message("bench@bench.example")?.formatted());
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..WORKER_CONCURRENCY {
        let (addr, bytes, next) = (sink.addr(), Arc::clone(&bytes), Arc::clone(&next));
        tasks.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut connection =
                AsyncSmtpConnection::connect_with_transport(Box::new(stream), &ClientId::default())
                    .await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                let envelope = lettre::address::Envelope::new(
                    Some("no-reply@localhost".parse()?),
                    vec![format!("s{i}@bench.example").parse()?],
                )?;
                connection.send(&envelope, &bytes).await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    anyhow::ensure!(
        sink.reached(n, Duration::from_secs(10)).await,
        "the SMTP sink accepted {} of {n} messages",
        sink.accepted()
    );
    crate::worker::acceptance_rate(sink).context("the sink accepted nothing")
}

/// Transactions per second of `transaction`, run once per item on `WORKER_CONCURRENCY` connections.
async fn transactions_per_second<T, F, Fut>(
    pool: &PgPool,
    items: Vec<T>,
    transaction: F,
) -> anyhow::Result<f64>
where
    T: Send + Sync + 'static,
    F: Fn(PgPool, Arc<Vec<T>>, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let n = items.len();
    let items = Arc::new(items);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..WORKER_CONCURRENCY {
        let (pool, items, next) = (pool.clone(), Arc::clone(&items), Arc::clone(&next));
        let transaction = transaction.clone();
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() {
                    return anyhow::Ok(());
                }
                transaction(pool.clone(), Arc::clone(&items), i).await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The token transaction's rate and what it cost.
pub struct TokenBaseline {
    pub per_second: f64,
    /// CPU ms per transaction, by part; its client is the bench process.
    pub cpu: PartsCpu,
}

impl TokenBaseline {
    /// CPU ms per transaction of PostgreSQL and of the client that drives it.
    pub fn cpu_ms(&self) -> f64 {
        self.cpu.postgres + self.cpu.bench
    }
}

/// Token transactions per second on PostgreSQL alone: `BEGIN`, one statement that revokes the
/// account's older tokens and stores a new one, `COMMIT`.
pub async fn token_transactions(
    pool: &PgPool,
    database: &str,
    accounts: Vec<i64>,
) -> anyhow::Result<TokenBaseline> {
    let n = accounts.len();
    let before = procfs::cpu_snapshot();
    let per_second = transactions_per_second(pool, accounts, |pool, accounts, i| async move {
        let token = ResetToken::generate()?;
        let mut tx = pool.begin().await?;
        // The least a token needs: the account's older ones revoked, the new one stored.
        sqlx::query(
            "WITH revoked AS (
                 UPDATE password_reset_tokens SET revoked_at = now()
                 WHERE user_id = $1 AND used_at IS NULL AND revoked_at IS NULL
             )
             INSERT INTO password_reset_tokens (user_id, token_hash, job_id, expires_at)
             VALUES ($1, $2, $3, now() + interval '1 hour')",
        )
        .bind(accounts[i])
        .bind(token.hash().as_slice())
        .bind(uuid::Uuid::new_v4())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    })
    .await?;
    let after = procfs::cpu_snapshot();
    let owners = Owners {
        resetmail: Vec::new(),
        bench: std::process::id(),
        not_ours: pg_monitor::other_work(pool, database).await?,
        broker: Default::default(),
    };
    let cpu = PartsCpu::between(&before, &after, n, &owners);
    Ok(TokenBaseline { per_second, cpu })
}

/// The job's database work alone ([`job_transaction::run`]), per second, one account per item.
pub async fn job_transactions(pool: &PgPool, emails: Vec<String>) -> anyhow::Result<f64> {
    transactions_per_second(pool, emails, |pool, emails, i| async move {
        job_transaction::run(&pool, &emails[i]).await
    })
    .await
}
