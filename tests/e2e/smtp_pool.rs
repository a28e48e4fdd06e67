//! The worker's own SMTP connection pool, against the SMTP sink over TCP.

use std::time::{Duration, Instant};

use lettre::Message;
use resetmail_testkit::{eventually, smtp_sink::SmtpSink};
use resetmail_worker::mailer::{Mailer, smtp::SmtpUrl};

fn message(n: usize) -> anyhow::Result<Message> {
    Ok(Message::builder()
        .from("Cloudreve <no-reply@example.com>".parse()?)
        .to(format!("user{n}@example.com").parse()?)
        .subject(format!("message {n}"))
        .body(format!("body of message {n}\r\nwith a second line\r\n"))?)
}

fn mailer(sink: &SmtpSink, connections: usize) -> anyhow::Result<Mailer> {
    let outbox = std::env::temp_dir().join("resetmail-unused-outbox");
    let url = SmtpUrl::parse(&sink.url()).map_err(anyhow::Error::msg)?;
    Mailer::new(Some(&url), &outbox, Duration::from_secs(10), connections)
}

/// lettre writes a message's final `\r\n.\r\n` apart from its body; with Nagle's algorithm on,
/// that write waits for the server's delayed ACK, which Linux holds back at least 40 ms
/// (TCP_DELACK_MIN). On loopback a message otherwise takes well under a millisecond. So if any
/// connection lost `TCP_NODELAY`, every message on it would take 40 ms or more, and the median
/// of twenty would be over 40 ms whatever the load: this asserts half that.
#[tokio::test]
async fn messages_on_a_kept_alive_connection_do_not_wait_for_delayed_acks() -> anyhow::Result<()> {
    let sink = SmtpSink::start().await;
    let mailer = mailer(&sink, 1)?;
    let mut took = Vec::new();
    for n in 0..21 {
        let message = message(n)?;
        let started = Instant::now();
        mailer.send(message).await?;
        // The first one also opens the connection.
        if n > 0 {
            took.push(started.elapsed());
        }
    }
    took.sort();
    let median = took[took.len() / 2];
    assert_eq!(sink.received().len(), 21);
    assert_eq!(sink.connections(), 1, "the connection was not kept alive");
    assert_eq!(sink.noops(), 0, "a kept connection was checked with NOOP");
    assert!(
        median < Duration::from_millis(20),
        "a message takes {median:?} (median): the send waits for delayed ACKs (Nagle is on)"
    );
    Ok(())
}

#[tokio::test]
async fn a_connection_the_server_closed_while_idle_is_replaced_without_losing_the_message()
-> anyhow::Result<()> {
    let sink = SmtpSink::start().await;
    let mailer = mailer(&sink, 2)?;
    mailer.send(message(1)?).await?;
    assert_eq!(sink.open_connections(), 1, "the connection was not kept");

    sink.hang_up_all();
    eventually(
        "the sink to close its connection",
        Duration::from_secs(5),
        || async { (sink.open_connections() == 0).then_some(()) },
    )
    .await;
    mailer.send(message(2)?).await?;

    let received = sink.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[1].rcpt_to, ["user2@example.com"]);
    assert_eq!(
        sink.connections(),
        2,
        "the closed connection was not replaced"
    );
    Ok(())
}

/// A relay that takes a few messages per connection answers the next MAIL FROM with 421 and
/// hangs up; nothing of the message was sent, so it goes at once on a fresh connection.
#[tokio::test]
async fn a_relay_s_limit_of_messages_per_connection_costs_no_message() -> anyhow::Result<()> {
    let sink = SmtpSink::start().await;
    sink.limit_messages_per_connection(2);
    let mailer = mailer(&sink, 1)?;
    for n in 0..5 {
        mailer.send(message(n)?).await?;
    }
    let received: Vec<_> = sink
        .received()
        .iter()
        .map(|mail| mail.rcpt_to.clone())
        .collect();
    assert_eq!(
        received,
        (0..5)
            .map(|n| vec![format!("user{n}@example.com")])
            .collect::<Vec<_>>()
    );
    assert_eq!(sink.connections(), 3);
    Ok(())
}

#[tokio::test]
async fn parallel_sends_use_parallel_connections_and_keep_at_most_the_pool_size()
-> anyhow::Result<()> {
    let sink = SmtpSink::start().await;
    let mailer = std::sync::Arc::new(mailer(&sink, 2)?);
    let mut sends = tokio::task::JoinSet::new();
    for n in 0..6 {
        let mailer = std::sync::Arc::clone(&mailer);
        let message = message(n)?;
        sends.spawn(async move { mailer.send(message).await });
    }
    while let Some(sent) = sends.join_next().await {
        sent??;
    }
    assert_eq!(sink.received().len(), 6);
    // Every send that found no idle connection opened one; only two are kept afterwards.
    eventually(
        "the surplus connections to close",
        Duration::from_secs(5),
        || async { (sink.open_connections() <= 2).then_some(()) },
    )
    .await;
    assert!(sink.connections() >= 2, "the sends did not run in parallel");
    Ok(())
}
