//! An SMTP server that accepts everything, after a configurable delay standing for a real relay's
//! latency, and notes when it accepted each message, by recipient; it also counts its connections
//! and the messages waiting for their answer.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
    sync::watch,
};

#[derive(Default)]
struct Accepted {
    /// When each recipient's message was accepted (the `250` after the final dot).
    by_recipient: HashMap<String, Instant>,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// A number that is going up and down, and the highest it reached since the last reset.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Gauge {
    fn up(&self) {
        let now = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn down(&self) {
        self.now.fetch_sub(1, Ordering::Relaxed);
    }

    fn reset_peak(&self) {
        self.peak
            .store(self.now.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

/// What every connection task shares with the [`Sink`] handle.
#[derive(Default)]
struct Shared {
    accepted: Mutex<Accepted>,
    /// How long the sink waits after the final dot before it answers, in microseconds.
    delay_us: AtomicU64,
    /// Open SMTP connections.
    connections: Gauge,
    /// Connections opened since the last reset.
    opened: AtomicUsize,
    /// Messages received in full whose answer is still to come (the relay's delay).
    in_flight: Gauge,
    /// Bumped by every reset: a message received before it and answered after (a stopped worker's,
    /// still in its delay) is not counted.
    epoch: AtomicU64,
}

/// Counts of the sink's connections and messages since the last [`Sink::reset`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SinkCounts {
    /// The most SMTP connections open at once.
    pub peak_connections: usize,
    /// SMTP connections opened.
    pub opened: usize,
    /// The most messages waiting for their answer at once.
    pub peak_in_flight: usize,
}

/// The sink; dropping it stops accepting connections.
pub struct Sink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    count: watch::Receiver<usize>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// Listens on a free port of 127.0.0.1, answering at once until [`Sink::set_delay`].
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (count_tx, count) = watch::channel(0);
        let count_tx = Arc::new(count_tx);
        let for_task = Arc::clone(&shared);
        let accept_task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&for_task), Arc::clone(&count_tx)));
            }
        });
        Ok(Self {
            addr,
            shared,
            count,
            accept_task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Answers each message this long after its final dot, from now on; each connection waits
    /// on its own, so a delayed message holds up no other connection.
    pub fn set_delay(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.shared.delay_us.store(micros, Ordering::Relaxed);
    }

    /// Forgets everything accepted so far, and the peaks and counts of [`Sink::counts`].
    pub fn reset(&self) {
        let mut accepted = lock(&self.shared.accepted);
        self.shared.epoch.fetch_add(1, Ordering::Relaxed);
        *accepted = Accepted::default();
        drop(accepted);
        self.shared.connections.reset_peak();
        self.shared.in_flight.reset_peak();
        self.shared.opened.store(0, Ordering::Relaxed);
    }

    /// Waits until `n` messages were accepted since the last reset; an error after `within`.
    pub async fn wait_for(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        let mut count = self.count.clone();
        let shared = Arc::clone(&self.shared);
        let reached = tokio::time::timeout(
            within,
            count.wait_for(|_| lock(&shared.accepted).by_recipient.len() >= n),
        )
        .await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => anyhow::bail!(
                "the SMTP sink accepted {} of {n} messages within {within:?}",
                self.accepted()
            ),
        }
    }

    /// Messages (distinct recipients) accepted since the last reset.
    pub fn accepted(&self) -> usize {
        lock(&self.shared.accepted).by_recipient.len()
    }

    /// The time from the first to the last accepted message.
    pub fn span(&self) -> Option<Duration> {
        let accepted = lock(&self.shared.accepted);
        Some(accepted.last?.duration_since(accepted.first?))
    }

    /// Messages per second from the first accepted to the last (the first starts the clock, so
    /// it is not counted); `None` before two were accepted.
    pub fn rate(&self) -> Option<f64> {
        let span = self.span()?;
        let n = self.accepted();
        (n >= 2).then(|| (n - 1) as f64 / span.as_secs_f64().max(1e-9))
    }

    /// When the message to `recipient` was accepted.
    pub fn accepted_at(&self, recipient: &str) -> Option<Instant> {
        lock(&self.shared.accepted)
            .by_recipient
            .get(recipient)
            .copied()
    }

    /// Connections and messages in flight since the last reset.
    pub fn counts(&self) -> SinkCounts {
        SinkCounts {
            peak_connections: self.shared.connections.peak(),
            opened: self.shared.opened.load(Ordering::Relaxed),
            peak_in_flight: self.shared.in_flight.peak(),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

fn lock(accepted: &Mutex<Accepted>) -> std::sync::MutexGuard<'_, Accepted> {
    accepted.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Holds one unit of a [`Gauge`] until dropped, however the connection ends.
struct Held<'a>(&'a Gauge);

impl<'a> Held<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        gauge.up();
        Self(gauge)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.down();
    }
}

async fn serve(
    mut stream: TcpStream,
    shared: Arc<Shared>,
    count: Arc<watch::Sender<usize>>,
) -> std::io::Result<()> {
    let _open = Held::new(&shared.connections);
    shared.opened.fetch_add(1, Ordering::Relaxed);
    stream.set_nodelay(true)?;
    let (reader, mut writer) = stream.split();
    let mut reader = BufReader::new(reader);
    writer.write_all(b"220 bench ESMTP\r\n").await?;
    let mut line = Vec::new();
    let mut recipients = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let verb = line
            .get(..4)
            .map(|verb| verb.to_ascii_uppercase())
            .unwrap_or_default();
        let reply: &[u8] = match verb.as_slice() {
            b"EHLO" => b"250-bench\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 10485760\r\n",
            b"HELO" | b"MAIL" | b"NOOP" => b"250 OK\r\n",
            b"RSET" => {
                recipients.clear();
                b"250 OK\r\n"
            }
            b"RCPT" => {
                let text = String::from_utf8_lossy(&line);
                let address = text
                    .split_once('<')
                    .and_then(|(_, rest)| rest.split_once('>'))
                    .map(|(address, _)| address.to_ascii_lowercase())
                    .unwrap_or_default();
                recipients.push(address);
                b"250 OK\r\n"
            }
            b"DATA" => {
                writer.write_all(b"354 go on\r\n").await?;
                loop {
                    line.clear();
                    if reader.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" {
                        break;
                    }
                }
                let epoch = shared.epoch.load(Ordering::Relaxed);
                let delay = Duration::from_micros(shared.delay_us.load(Ordering::Relaxed));
                if !delay.is_zero() {
                    let _waiting = Held::new(&shared.in_flight);
                    tokio::time::sleep(delay).await;
                }
                let now = Instant::now();
                let counted = {
                    let mut accepted = lock(&shared.accepted);
                    let counted = shared.epoch.load(Ordering::Relaxed) == epoch;
                    if counted {
                        accepted.first.get_or_insert(now);
                        accepted.last = Some(now);
                        for recipient in recipients.drain(..) {
                            accepted.by_recipient.insert(recipient, now);
                        }
                    }
                    recipients.clear();
                    counted
                };
                if counted {
                    count.send_modify(|count| *count += 1);
                }
                b"250 accepted\r\n"
            }
            b"QUIT" => {
                writer.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => b"500 unknown command\r\n",
        };
        writer.write_all(reply).await?;
    }
}

#[cfg(test)]
mod tests {
    use lettre::{
        address::Envelope,
        transport::smtp::{client::AsyncSmtpConnection, extension::ClientId},
    };

    use super::*;

    /// Sends one message to `to` on a connection of its own, as the worker's SMTP client does.
    async fn send(addr: SocketAddr, to: &str) -> anyhow::Result<()> {
        let stream = TcpStream::connect(addr).await?;
        let mut connection =
            AsyncSmtpConnection::connect_with_transport(Box::new(stream), &ClientId::default())
                .await?;
        let envelope = Envelope::new(Some("bench@bench.example".parse()?), vec![to.parse()?])?;
        connection
            .send(&envelope, b"Subject: hello\r\n\r\nhello\r\n")
            .await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_delayed_answer_holds_up_no_other_connection() -> anyhow::Result<()> {
        let sink = Sink::start().await?;
        sink.set_delay(Duration::from_secs(1));
        let (first, second) = tokio::join!(
            send(sink.addr(), "a@bench.example"),
            send(sink.addr(), "b@bench.example")
        );
        first?;
        second?;
        assert_eq!(sink.accepted(), 2);
        let counts = sink.counts();
        assert_eq!(counts.peak_in_flight, 2, "{counts:?}");
        assert_eq!(counts.peak_connections, 2, "{counts:?}");
        assert_eq!(counts.opened, 2, "{counts:?}");
        Ok(())
    }

    #[tokio::test]
    async fn a_message_answered_after_a_reset_is_answered_but_not_counted() -> anyhow::Result<()> {
        let sink = Sink::start().await?;
        sink.set_delay(Duration::from_secs(1));
        let sending = tokio::spawn(send(sink.addr(), "late@bench.example"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.counts().peak_in_flight == 0 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the message never reached the sink"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sink.reset();
        sending.await??;
        assert_eq!(sink.accepted(), 0);
        assert_eq!(sink.accepted_at("late@bench.example"), None);
        Ok(())
    }
}
