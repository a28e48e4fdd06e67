//! An SMTP server that accepts everything as fast as it can and notes when it accepted each
//! message, by recipient.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
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

/// The sink; dropping it stops accepting connections.
pub struct Sink {
    addr: SocketAddr,
    accepted: Arc<Mutex<Accepted>>,
    count: watch::Receiver<usize>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Sink {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(Mutex::new(Accepted::default()));
        let (count_tx, count) = watch::channel(0);
        let count_tx = Arc::new(count_tx);
        let shared = Arc::clone(&accepted);
        let accept_task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&shared), Arc::clone(&count_tx)));
            }
        });
        Ok(Self {
            addr,
            accepted,
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

    /// Forgets everything accepted so far.
    pub fn reset(&self) {
        *lock(&self.accepted) = Accepted::default();
    }

    /// Waits until `n` messages were accepted since the last reset; an error after `within`.
    pub async fn wait_for(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        let mut count = self.count.clone();
        let accepted = Arc::clone(&self.accepted);
        let reached = tokio::time::timeout(
            within,
            count.wait_for(|_| lock(&accepted).by_recipient.len() >= n),
        )
        .await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => anyhow::bail!(
                "the SMTP sink accepted {} of {n} messages within {within:?}",
                lock(&self.accepted).by_recipient.len()
            ),
        }
    }

    /// The time from the first to the last accepted message.
    pub fn span(&self) -> Option<Duration> {
        let accepted = lock(&self.accepted);
        Some(accepted.last?.duration_since(accepted.first?))
    }

    /// When the message to `recipient` was accepted.
    pub fn accepted_at(&self, recipient: &str) -> Option<Instant> {
        lock(&self.accepted).by_recipient.get(recipient).copied()
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

async fn serve(
    mut stream: TcpStream,
    accepted: Arc<Mutex<Accepted>>,
    count: Arc<watch::Sender<usize>>,
) -> std::io::Result<()> {
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
                let now = Instant::now();
                {
                    let mut accepted = lock(&accepted);
                    accepted.first.get_or_insert(now);
                    accepted.last = Some(now);
                    for recipient in recipients.drain(..) {
                        accepted.by_recipient.insert(recipient, now);
                    }
                }
                count.send_modify(|count| *count += 1);
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
