//! The sink against lettre's client and against raw SMTP lines.

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::*;

use lettre::message::{Mailbox, MultiPart, header::ContentType};
use lettre::transport::smtp::Error as SmtpError;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

const WITHIN: Duration = Duration::from_secs(10);

fn transport(sink: &SmtpSink) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(sink.port())
        .timeout(Some(WITHIN))
        .build()
}

fn mailbox(address: &str) -> Mailbox {
    address
        .parse()
        .unwrap_or_else(|e| panic!("bad test address {address}: {e}"))
}

fn plain(to: &str, subject: &str, body: &str) -> Message {
    Message::builder()
        .from(mailbox("Reset <noreply@example.test>"))
        .to(mailbox(to))
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        .body(body.to_owned())
        .unwrap_or_else(|e| panic!("cannot build the test message: {e}"))
}

async fn send_ok(mailer: &AsyncSmtpTransport<Tokio1Executor>, message: Message) {
    if let Err(e) = mailer.send(message).await {
        panic!("send should succeed, got {e} ({e:?})");
    }
}

async fn send_err(mailer: &AsyncSmtpTransport<Tokio1Executor>, message: Message) -> SmtpError {
    match mailer.send(message).await {
        Ok(response) => panic!("send should fail, got {response:?}"),
        Err(e) => e,
    }
}

/// Talks raw SMTP: sends one line and returns the reply's lines.
async fn exchange(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    line: &str,
) -> Vec<String> {
    if !line.is_empty() {
        let sent = writer.write_all(format!("{line}\r\n").as_bytes()).await;
        assert!(sent.is_ok(), "writing {line:?}: {sent:?}");
    }
    read_reply(reader).await
}

async fn read_reply(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut buf = String::new();
        let read = tokio::time::timeout(WITHIN, reader.read_line(&mut buf)).await;
        match read {
            Ok(Ok(0)) => return lines,
            Ok(Ok(_)) => {}
            other => panic!("reading a reply: {other:?}"),
        }
        let done = buf.as_bytes().get(3) != Some(&b'-');
        lines.push(buf.trim_end().to_owned());
        if done {
            return lines;
        }
    }
}

async fn raw_client(
    sink: &SmtpSink,
) -> (
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
) {
    let stream = TcpStream::connect(sink.addr())
        .await
        .unwrap_or_else(|e| panic!("connect to sink: {e}"));
    let (reader, writer) = stream.into_split();
    (BufReader::new(reader), writer)
}

#[tokio::test]
async fn multipart_alternative_message_is_recorded_and_parsed() {
    let sink = SmtpSink::start().await;
    assert_eq!(sink.url(), format!("smtp://127.0.0.1:{}", sink.port()));
    let mailer = transport(&sink);
    let message = Message::builder()
        .from(mailbox("Reset Service <noreply@example.test>"))
        .to(mailbox("Ålice <alice@example.test>"))
        .to(mailbox("bob@example.test"))
        .subject("Réinitialisez votre mot de passe")
        .message_id(Some("<abc.123@example.test>".to_owned()))
        .multipart(MultiPart::alternative_plain_html(
            "Bonjour,\nhttps://example.test/reset?token=abc\n".to_owned(),
            "<p>Bonjour, <a href=\"https://example.test/reset?token=abc\">reset</a></p>".to_owned(),
        ))
        .unwrap_or_else(|e| panic!("cannot build the test message: {e}"));
    send_ok(&mailer, message).await;

    let mails = sink.wait_for(1, WITHIN).await;
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail.mail_from, "noreply@example.test");
    assert_eq!(mail.rcpt_to, ["alice@example.test", "bob@example.test"]);
    assert!(mail.data.ends_with("\r\n"), "data: {:?}", mail.data);
    assert!(
        !mail.data.replace("\r\n", "").contains('\n'),
        "bare LF in data: {:?}",
        mail.data
    );

    let parsed = mail.parsed();
    assert_eq!(parsed.subject, "Réinitialisez votre mot de passe");
    assert_eq!(parsed.from, "noreply@example.test");
    assert_eq!(parsed.to, ["alice@example.test", "bob@example.test"]);
    assert_eq!(parsed.message_id, "abc.123@example.test");
    assert_eq!(parsed.content_type, "multipart/alternative");
    assert_eq!(
        parsed.text,
        "Bonjour,\r\nhttps://example.test/reset?token=abc\r\n"
    );
    assert_eq!(
        parsed.html,
        "<p>Bonjour, <a href=\"https://example.test/reset?token=abc\">reset</a></p>"
    );
    assert_eq!(parsed.header("message-id"), Some("<abc.123@example.test>"));
    assert!(
        parsed
            .header("Content-Type")
            .is_some_and(|v| v.starts_with("multipart/alternative;")),
        "headers: {:?}",
        parsed.headers
    );
    assert_eq!(sink.attempts(), 1);
    assert_eq!(sink.received(), mails);
}

#[tokio::test]
async fn leading_dots_survive() {
    let sink = SmtpSink::start().await;
    let mailer = transport(&sink);
    let body = ".starts with a dot\n..two dots\n.\nend\n";
    send_ok(&mailer, plain("a@example.test", "dots", body)).await;
    send_ok(&mailer, plain("b@example.test", "second", "hello\n")).await;

    let mails = sink.wait_for(2, WITHIN).await;
    // lettre always ends DATA with "\r\n.\r\n", even after a body that already ends with
    // CRLF, so a single-part body arrives with one extra empty line.
    assert!(
        mails[0]
            .data
            .ends_with("\r\n\r\n.starts with a dot\r\n..two dots\r\n.\r\nend\r\n\r\n"),
        "data: {:?}",
        mails[0].data
    );
    assert_eq!(
        mails[0].parsed().text,
        format!("{}\r\n", body.replace('\n', "\r\n"))
    );
    assert_eq!(mails[1].rcpt_to, ["b@example.test"]);
    assert_eq!(mails[1].parsed().subject, "second");
    assert_eq!(mails[1].parsed().content_type, "text/plain");
    assert_eq!(mails[1].parsed().html, "");
}

#[tokio::test]
async fn failed_data_is_transient_and_the_next_send_succeeds() {
    let sink = SmtpSink::start().await;
    let mailer = transport(&sink);
    sink.fail_data(451, "4.3.0 Try again later", 1);

    let error = send_err(&mailer, plain("a@example.test", "first", "one\n")).await;
    assert!(error.is_transient(), "{error} ({error:?})");
    assert!(!error.is_permanent());
    assert_eq!(error.status().map(u16::from), Some(451));
    assert_eq!(sink.attempts(), 1);
    assert!(sink.received().is_empty());

    send_ok(&mailer, plain("a@example.test", "second", "two\n")).await;
    let mails = sink.wait_for(1, WITHIN).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].parsed().subject, "second");
    assert_eq!(sink.attempts(), 2);

    sink.fail_data(554, "5.6.0 Rejected", 1);
    let error = send_err(&mailer, plain("a@example.test", "third", "three\n")).await;
    assert!(error.is_permanent(), "{error} ({error:?})");
    assert_eq!(sink.attempts(), 3);
}

#[tokio::test]
async fn rejected_recipient_is_permanent_every_time() {
    let sink = SmtpSink::start().await;
    let mailer = transport(&sink);
    sink.reject_recipient("Nobody@Example.test", 550, "5.1.1 No such user");

    for _ in 0..2 {
        let error = send_err(&mailer, plain("nobody@example.TEST", "x", "x\n")).await;
        assert!(error.is_permanent(), "{error} ({error:?})");
        assert_eq!(error.status().map(u16::from), Some(550));
    }
    assert_eq!(sink.attempts(), 0);

    send_ok(&mailer, plain("somebody@example.test", "y", "y\n")).await;
    assert_eq!(sink.wait_for(1, WITHIN).await.len(), 1);

    sink.clear_faults();
    send_ok(&mailer, plain("nobody@example.test", "z", "z\n")).await;
    assert_eq!(sink.wait_for(2, WITHIN).await.len(), 2);
}

#[tokio::test]
async fn down_sink_fails_sends_until_it_is_up_again() {
    let sink = SmtpSink::start().await;
    let mailer = transport(&sink);
    // A pooled connection exists before the outage.
    send_ok(&mailer, plain("a@example.test", "before", "before\n")).await;

    sink.set_down(true);
    let error = send_err(&mailer, plain("a@example.test", "during", "during\n")).await;
    assert!(error.is_transient(), "{error} ({error:?})");
    assert_eq!(error.status().map(u16::from), Some(421));
    let error = send_err(&mailer, plain("a@example.test", "during", "during\n")).await;
    assert!(error.is_transient(), "{error} ({error:?})");

    sink.set_down(false);
    send_ok(&mailer, plain("a@example.test", "after", "after\n")).await;
    let subjects: Vec<String> = sink
        .wait_for(2, WITHIN)
        .await
        .iter()
        .map(|m| m.parsed().subject)
        .collect();
    assert_eq!(subjects, ["before", "after"]);
    assert_eq!(sink.attempts(), 2);
}

#[tokio::test]
async fn raw_protocol_replies() {
    let sink = SmtpSink::start().await;
    let (mut r, mut w) = raw_client(&sink).await;
    let greeting = read_reply(&mut r).await;
    assert_eq!(sink.connections(), 1);
    assert!(greeting[0].starts_with("220 "), "{greeting:?}");

    let ehlo = exchange(&mut r, &mut w, "EHLO client.test").await;
    assert!(ehlo.iter().all(|l| l.starts_with("250")), "{ehlo:?}");
    assert!(ehlo.contains(&"250-8BITMIME".to_owned()), "{ehlo:?}");
    assert!(ehlo.contains(&"250-SMTPUTF8".to_owned()), "{ehlo:?}");
    assert!(
        ehlo.last().is_some_and(|l| l.starts_with("250 SIZE ")),
        "{ehlo:?}"
    );
    for absent in ["PIPELINING", "STARTTLS", "AUTH"] {
        assert!(!ehlo.iter().any(|l| l.contains(absent)), "{ehlo:?}");
    }

    let code = |reply: Vec<String>| reply.first().map(|l| l[..3].to_owned());
    assert_eq!(
        code(exchange(&mut r, &mut w, "RCPT TO:<x@y>").await).as_deref(),
        Some("503")
    );
    assert_eq!(
        code(exchange(&mut r, &mut w, "DATA").await).as_deref(),
        Some("503")
    );
    assert_eq!(
        code(exchange(&mut r, &mut w, "NOOP").await).as_deref(),
        Some("250")
    );
    assert_eq!(
        code(exchange(&mut r, &mut w, "VRFY someone").await).as_deref(),
        Some("252")
    );
    assert_eq!(
        code(exchange(&mut r, &mut w, "BOGUS").await).as_deref(),
        Some("500")
    );
    assert_eq!(
        code(
            exchange(
                &mut r,
                &mut w,
                "mail from:<s@example.test> BODY=8BITMIME SMTPUTF8"
            )
            .await
        )
        .as_deref(),
        Some("250")
    );
    assert_eq!(
        code(exchange(&mut r, &mut w, "MAIL FROM:<t@example.test>").await).as_deref(),
        Some("503")
    );
    assert_eq!(
        code(exchange(&mut r, &mut w, "DATA").await).as_deref(),
        Some("554")
    );
    assert_eq!(
        code(exchange(&mut r, &mut w, "RCPT TO: <R@example.test> NOTIFY=NEVER").await).as_deref(),
        Some("250")
    );
    assert_eq!(
        code(exchange(&mut r, &mut w, "RSET").await).as_deref(),
        Some("250")
    );
    assert_eq!(
        code(exchange(&mut r, &mut w, "DATA").await).as_deref(),
        Some("503")
    );

    exchange(&mut r, &mut w, "MAIL FROM:<>").await;
    exchange(&mut r, &mut w, "RCPT TO:<r@example.test>").await;
    assert_eq!(
        code(exchange(&mut r, &mut w, "DATA").await).as_deref(),
        Some("354")
    );
    let sent = w.write_all(b"Subject: raw\r\n\r\n..x\r\n.\r\n").await;
    assert!(sent.is_ok(), "{sent:?}");
    assert_eq!(code(read_reply(&mut r).await).as_deref(), Some("250"));
    assert_eq!(
        code(exchange(&mut r, &mut w, "HELO client.test").await).as_deref(),
        Some("250")
    );

    // An existing connection is answered 421 at its next command, then closed.
    sink.set_down(true);
    let reply = exchange(&mut r, &mut w, "NOOP").await;
    assert!(
        reply[0].starts_with("421 ") && reply[0].contains("unavailable"),
        "{reply:?}"
    );
    assert!(
        read_reply(&mut r).await.is_empty(),
        "connection should be closed"
    );

    let (mut r2, _w2) = raw_client(&sink).await;
    let reply = read_reply(&mut r2).await;
    assert!(reply[0].starts_with("421 "), "{reply:?}");
    assert!(
        read_reply(&mut r2).await.is_empty(),
        "connection should be closed"
    );

    sink.set_down(false);
    let (mut r3, mut w3) = raw_client(&sink).await;
    assert!(read_reply(&mut r3).await[0].starts_with("220 "));
    let reply = exchange(&mut r3, &mut w3, "QUIT").await;
    assert!(reply[0].starts_with("221 "), "{reply:?}");
    assert!(
        read_reply(&mut r3).await.is_empty(),
        "connection should be closed"
    );
    assert_eq!(sink.connections(), 3);

    let mails = sink.received();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].mail_from, "");
    assert_eq!(mails[0].rcpt_to, ["r@example.test"]);
    assert_eq!(mails[0].data, "Subject: raw\r\n\r\n.x\r\n");
}

#[tokio::test]
async fn many_concurrent_senders() {
    let sink = SmtpSink::start().await;
    let mailer = transport(&sink);
    let mut sends = JoinSet::new();
    for i in 0..40 {
        let mailer = mailer.clone();
        sends.spawn(async move {
            mailer
                .send(plain(
                    &format!("user{i}@example.test"),
                    &format!("n{i}"),
                    "hi\n",
                ))
                .await
        });
    }
    while let Some(result) = sends.join_next().await {
        match result {
            Ok(Ok(_)) => {}
            other => panic!("a concurrent send failed: {other:?}"),
        }
    }
    let mut recipients: Vec<String> = sink
        .wait_for(40, WITHIN)
        .await
        .into_iter()
        .flat_map(|m| m.rcpt_to)
        .collect();
    recipients.sort();
    recipients.dedup();
    assert_eq!(recipients.len(), 40);
}

#[tokio::test]
async fn wait_for_panics_with_the_count_on_timeout() {
    let sink = SmtpSink::start().await;
    let mailer = transport(&sink);
    send_ok(&mailer, plain("a@example.test", "only", "only\n")).await;
    let waited = tokio::spawn(async move { sink.wait_for(2, Duration::from_millis(50)).await });
    let panic = match waited.await {
        Ok(mails) => panic!("wait_for should have panicked, got {mails:?}"),
        Err(e) => e.into_panic(),
    };
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("at least 2 message(s)"), "{message}");
    assert!(message.contains("but 1 arrived"), "{message}");
}

#[tokio::test]
async fn a_delayed_answer_holds_up_no_other_connection() {
    let sink = SmtpSink::start().await;
    // The first message waits a minute for its answer; the second, sent meanwhile on a connection
    // of its own with no delay, is answered while the first still waits.
    sink.set_delay(Duration::from_secs(60));
    let slow = tokio::spawn({
        let mailer = transport(&sink);
        async move { mailer.send(plain("a@example.test", "a", "a")).await }
    });
    crate::eventually(
        "the first message waiting for its answer",
        WITHIN,
        || async { (sink.waiting() == 1).then_some(()) },
    )
    .await;
    sink.set_delay(Duration::ZERO);
    send_ok(&transport(&sink), plain("b@example.test", "b", "b")).await;
    assert!(!slow.is_finished(), "the first message was answered");
    assert_eq!(sink.waiting(), 1);
    assert_eq!(sink.peak_waiting(), 2);
    assert_eq!(sink.peak_connections(), 2);
    assert_eq!(
        sink.accepted_at().into_keys().collect::<Vec<_>>(),
        ["b@example.test"]
    );
    slow.abort();
}

#[tokio::test]
async fn a_message_answered_after_a_reset_is_answered_but_not_recorded() {
    let sink = SmtpSink::start().await;
    let mailer = transport(&sink);
    send_ok(&mailer, plain("before@example.test", "before", "x")).await;
    sink.hold();
    let late = tokio::spawn({
        let mailer = mailer.clone();
        async move { send_ok(&mailer, plain("late@example.test", "late", "x")).await }
    });
    sink.wait_held(1, WITHIN).await;
    sink.reset();
    assert_eq!((sink.accepted(), sink.connections()), (0, 0));
    sink.release();
    late.await.unwrap();
    assert_eq!(sink.accepted(), 0);
    assert_eq!(sink.acceptance_span(), None);
    send_ok(&mailer, plain("after@example.test", "after", "x")).await;
    assert_eq!(sink.received()[0].rcpt_to, ["after@example.test"]);
}

#[tokio::test]
async fn dropping_the_sink_stops_it() {
    let sink = SmtpSink::start().await;
    let (mut r, mut w) = raw_client(&sink).await;
    assert!(read_reply(&mut r).await[0].starts_with("220 "));
    let addr = sink.addr();
    drop(sink);
    // The connection task is aborted soon: the client sees the connection closed.
    let _ = w.write_all(b"NOOP\r\n").await;
    loop {
        let mut buf = String::new();
        match tokio::time::timeout(WITHIN, r.read_line(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => panic!("the connection stayed open after the sink was dropped"),
        }
    }
    // The listener was dropped before the connection tasks were aborted.
    let connected = TcpStream::connect(addr).await;
    assert!(
        connected.is_err(),
        "the listener is still open: {connected:?}"
    );
}
