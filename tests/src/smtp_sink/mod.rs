//! An in-process SMTP server over real TCP that records the mail it accepts, with fault injection,
//! for the tests and the benchmark (which also uses its relay delay and its counts).
//!
//! It speaks the part of RFC 5321 that lettre's async SMTP transport uses over plain
//! `smtp://` (no TLS, no PIPELINING): the greeting, EHLO/HELO, AUTH PLAIN (only when
//! [`SmtpSink::require_auth`] asked for it), MAIL, RCPT, DATA (with dot-unstuffing), RSET, NOOP,
//! VRFY and QUIT. Every accepted connection is served by its
//! own task; dropping the [`SmtpSink`] stops the listener and every connection task.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use mail_parser::{MessageParser, MimeHeaders};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use session::accept_loop;

mod session;
#[cfg(test)]
mod tests;

/// The name the sink gives itself in its greeting and its EHLO reply.
const SERVER_NAME: &str = "resetmail-sink";

/// Connections the kernel may complete before the sink accepts them (capped by
/// `net.core.somaxconn`).
const ACCEPT_BACKLOG: u32 = 4096;

/// The largest message the sink accepts, advertised as `SIZE` in the EHLO reply.
pub const MAX_MESSAGE_SIZE: usize = 10 * 1024 * 1024;

/// The reply sent on connect, and to any command, while the sink is down.
const UNAVAILABLE: &str =
    "421 4.3.2 resetmail-sink Service unavailable, closing transmission channel";

/// An SMTP server listening on `127.0.0.1`, recording every message it accepts.
///
/// Dropping it stops the listener and aborts all its connection tasks.
#[derive(Debug)]
pub struct SmtpSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

/// One message the sink accepted (answered `250` after the final dot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The reverse path of `MAIL FROM`, without angle brackets or ESMTP parameters (empty for `<>`).
    pub mail_from: String,
    /// The forward paths of the accepted `RCPT TO` commands, in order, without angle brackets or parameters.
    pub rcpt_to: Vec<String>,
    /// The raw message as received (lettre sends CRLF line endings), dot-unstuffed, ending with the last line's CRLF.
    pub data: String,
    /// When the sink accepted it (just before its `250`).
    pub accepted_at: Instant,
}

/// The parts of a message that tests usually check, decoded by mail-parser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedMail {
    /// The decoded `Subject` header (empty if absent).
    pub subject: String,
    /// The addresses of every `To` header, in order, without display names.
    pub to: Vec<String>,
    /// The address of the first `From` mailbox, without display name (empty if absent).
    pub from: String,
    /// The `Message-ID`, without angle brackets (empty if absent).
    pub message_id: String,
    /// The decoded first inline `text/plain` body part (empty if none).
    pub text: String,
    /// The decoded first inline `text/html` body part (empty if none).
    pub html: String,
    /// The top-level media type, lower-case, without parameters, e.g. `multipart/alternative` (`text/plain` if absent).
    pub content_type: String,
    /// The top-level headers in order: name as written, value unfolded and trimmed but not decoded (RFC 2047 words stay encoded).
    pub headers: Vec<(String, String)>,
}

/// State shared by the [`SmtpSink`] handle and its tasks.
#[derive(Debug)]
struct Shared {
    mails: watch::Sender<Vec<ReceivedMail>>,
    faults: Mutex<Faults>,
    down: AtomicBool,
    attempts: AtomicU32,
    connections: AtomicU32,
    /// Connections being served now.
    open: AtomicU32,
    /// The most connections served at once.
    peak_open: AtomicU32,
    /// What a completed message waits for before its reply (see [`SmtpSink::hold`]).
    gate: watch::Sender<Gate>,
    /// Messages waiting at the gate now.
    held: watch::Sender<u32>,
    /// Bumped to make every open connection close at once.
    hang_up: watch::Sender<u64>,
    /// The user name and password every session must give with `AUTH PLAIN`, when set.
    credentials: Mutex<Option<(String, String)>>,
    /// Sessions that authenticated with the right credentials.
    logins: AtomicU32,
    /// How long a completed message waits before its reply, in microseconds (a relay's latency).
    delay_us: AtomicU64,
    /// Completed messages waiting for their reply now (delayed or held), and the most at once.
    waiting: AtomicU32,
    peak_waiting: AtomicU32,
    /// Bumped by [`SmtpSink::reset`]: a message completed before it and answered after is not
    /// recorded.
    epoch: AtomicU64,
    /// `NOOP` commands answered.
    noops: AtomicU32,
    /// Messages one connection may carry (0: no limit); the next `MAIL` gets `421` and the
    /// connection closes, as relays with a per-connection limit do.
    per_connection: AtomicU32,
}

/// Whether completed messages are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gate {
    /// At once.
    Open,
    /// Not yet: each waits, its client waiting for the reply.
    Hold,
    /// Never: each waiting message is dropped with its connection, unanswered and not received.
    Drop,
}

/// The injected faults.
#[derive(Debug, Default)]
struct Faults {
    /// Replies for the next DATA completions, used front first.
    data_failures: VecDeque<Reply>,
    /// Replies for `RCPT TO`, keyed by the ASCII-lower-cased address.
    rejected_recipients: HashMap<String, Reply>,
}

/// A one-line SMTP reply.
#[derive(Clone, Debug)]
struct Reply {
    code: u16,
    text: String,
}

impl Reply {
    fn new(code: u16, text: &str) -> Self {
        assert!(
            (400..=599).contains(&code),
            "an injected SMTP failure needs a 4xx or 5xx code, got {code}"
        );
        assert!(
            !text.contains(['\r', '\n']),
            "an injected SMTP reply text must be one line, got {text:?}"
        );
        Self {
            code,
            text: text.to_owned(),
        }
    }

    fn line(&self) -> String {
        format!("{} {}", self.code, self.text)
    }
}

impl Shared {
    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn credentials(&self) -> Option<(String, String)> {
        self.credentials
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }
}

impl SmtpSink {
    /// Binds `127.0.0.1:0` and starts serving SMTP; panics if it cannot bind.
    pub async fn start() -> SmtpSink {
        let listener = TcpSocket::new_v4()
            .and_then(|socket| {
                socket.bind((Ipv4Addr::LOCALHOST, 0).into())?;
                // Room for a worker that opens a thousand connections at once: with the usual
                // 1,024 the kernel drops the handshakes that overflow the queue, and each such
                // client waits for a greeting until its timeout.
                socket.listen(ACCEPT_BACKLOG)
            })
            .unwrap_or_else(|e| panic!("SMTP sink: cannot listen on 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("SMTP sink: no local address: {e}"));
        let shared = Arc::new(Shared {
            mails: watch::Sender::new(Vec::new()),
            faults: Mutex::new(Faults::default()),
            down: AtomicBool::new(false),
            attempts: AtomicU32::new(0),
            connections: AtomicU32::new(0),
            open: AtomicU32::new(0),
            peak_open: AtomicU32::new(0),
            gate: watch::Sender::new(Gate::Open),
            held: watch::Sender::new(0),
            hang_up: watch::Sender::new(0),
            credentials: Mutex::new(None),
            logins: AtomicU32::new(0),
            delay_us: AtomicU64::new(0),
            waiting: AtomicU32::new(0),
            peak_waiting: AtomicU32::new(0),
            epoch: AtomicU64::new(0),
            noops: AtomicU32::new(0),
            per_connection: AtomicU32::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        SmtpSink {
            addr,
            shared,
            accept_task,
        }
    }

    /// The address the sink listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port the sink listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The sink as an SMTP URL without TLS, e.g. `smtp://127.0.0.1:2525`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// A snapshot of the accepted messages, in the order they were accepted.
    pub fn received(&self) -> Vec<ReceivedMail> {
        self.shared.mails.borrow().clone()
    }

    /// The number of messages accepted (since the last [`SmtpSink::reset`]).
    pub fn accepted(&self) -> usize {
        self.shared.mails.borrow().len()
    }

    /// When the message to each recipient was accepted, by recipient as given in `RCPT TO`.
    pub fn accepted_at(&self) -> HashMap<String, Instant> {
        self.shared
            .mails
            .borrow()
            .iter()
            .flat_map(|mail| {
                mail.rcpt_to
                    .iter()
                    .map(|recipient| (recipient.clone(), mail.accepted_at))
            })
            .collect()
    }

    /// The time from the first accepted message to the last; `None` before one was accepted.
    pub fn acceptance_span(&self) -> Option<Duration> {
        let mails = self.shared.mails.borrow();
        Some(mails.last()?.accepted_at - mails.first()?.accepted_at)
    }

    /// Waits until at least `n` messages were accepted; false if that takes longer than `within`.
    pub async fn reached(&self, n: usize, within: Duration) -> bool {
        let mut rx = self.shared.mails.subscribe();
        tokio::time::timeout(within, rx.wait_for(|mails| mails.len() >= n))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }

    /// Waits until at least `n` messages were accepted and returns them all; panics if that takes longer than `within`.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<ReceivedMail> {
        match self.reached(n, within).await {
            true => self.received(),
            false => {
                let mails = self.received();
                panic!(
                    "SMTP sink: expected at least {n} message(s) within {within:?}, but {} arrived \
                     ({} DATA attempt(s)); received so far: {:#?}",
                    mails.len(),
                    self.attempts(),
                    mails
                        .iter()
                        .map(|m| (&m.mail_from, &m.rcpt_to))
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    /// Answers the next `times` DATA completions (after the final dot) with `code text` instead of `250`, without recording the message.
    ///
    /// Calls queue up in order: `fail_data(451, ..., 2)` then `fail_data(554, ..., 1)` fails three
    /// deliveries, two transiently then one permanently. `code` must be 4xx or 5xx.
    pub fn fail_data(&self, code: u16, text: &str, times: u32) {
        let reply = Reply::new(code, text);
        let mut faults = self.shared.faults();
        for _ in 0..times {
            faults.data_failures.push_back(reply.clone());
        }
    }

    /// Answers every `RCPT TO` for `address` (compared ASCII case-insensitively) with `code text`; `code` must be 4xx or 5xx.
    pub fn reject_recipient(&self, address: &str, code: u16, text: &str) {
        let reply = Reply::new(code, text);
        self.shared
            .faults()
            .rejected_recipients
            .insert(address.to_ascii_lowercase(), reply);
    }

    /// Removes every injected fault: pending DATA failures and rejected recipients (not [`SmtpSink::set_down`]).
    pub fn clear_faults(&self) {
        *self.shared.faults() = Faults::default();
    }

    /// While down, new connections get `421 ... unavailable` and are closed, and existing ones are answered `421` and closed at their next command.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// The number of DATA commands whose content was fully received, whatever the answer (accepted or failed).
    pub fn attempts(&self) -> u32 {
        self.shared.attempts.load(Ordering::SeqCst)
    }

    /// The number of `NOOP` commands answered.
    pub fn noops(&self) -> u32 {
        self.shared.noops.load(Ordering::SeqCst)
    }

    /// From now on, a connection carries at most `messages` messages: its next `MAIL` is
    /// answered `421` and it is closed (Exchange and hosted relays limit messages per connection).
    pub fn limit_messages_per_connection(&self, messages: u32) {
        self.shared.per_connection.store(messages, Ordering::SeqCst);
    }

    /// The number of TCP connections accepted (since the last [`SmtpSink::reset`]), including
    /// those refused with `421` while down.
    pub fn connections(&self) -> u32 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// From now on, advertises `AUTH PLAIN` and refuses `MAIL` (530) until a session has given
    /// `user` and `password`; wrong ones get 535.
    pub fn require_auth(&self, user: &str, password: &str) {
        *self
            .shared
            .credentials
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((user.to_owned(), password.to_owned()));
    }

    /// The number of successful `AUTH` commands so far.
    pub fn logins(&self) -> u32 {
        self.shared.logins.load(Ordering::SeqCst)
    }

    /// The number of connections open now.
    pub fn open_connections(&self) -> u32 {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// The most connections open at once (since the last [`SmtpSink::reset`]).
    pub fn peak_connections(&self) -> u32 {
        self.shared.peak_open.load(Ordering::SeqCst)
    }

    /// From now on each completed message waits for its reply (its client waiting in the end of
    /// DATA, as with a slow relay) until [`SmtpSink::release`] or [`SmtpSink::drop_held`].
    pub fn hold(&self) {
        self.shared.gate.send_replace(Gate::Hold);
    }

    /// Answers the waiting messages (they are received) and every later one at once.
    pub fn release(&self) {
        self.shared.gate.send_replace(Gate::Open);
    }

    /// Drops the waiting messages with their connections, unanswered and not received, as a relay
    /// that never accepted them; later messages are answered at once.
    pub fn drop_held(&self) {
        self.shared.gate.send_replace(Gate::Drop);
        // Back to open once every waiting message has seen the order.
        let mut held = self.shared.held.subscribe();
        let gate = self.shared.gate.clone();
        tokio::spawn(async move {
            let _ = held.wait_for(|n| *n == 0).await;
            gate.send_if_modified(|state| {
                let dropping = *state == Gate::Drop;
                if dropping {
                    *state = Gate::Open;
                }
                dropping
            });
        });
    }

    /// Waits until `n` messages wait at the gate of [`SmtpSink::hold`]; panics after `within`.
    pub async fn wait_held(&self, n: u32, within: Duration) {
        let mut held = self.shared.held.subscribe();
        if tokio::time::timeout(within, held.wait_for(|held| *held >= n))
            .await
            .is_err()
        {
            panic!(
                "SMTP sink: {} of {n} messages held after {within:?}",
                *held.borrow()
            );
        }
    }

    /// From now on, answers each completed message this long after its final dot, as a relay
    /// does; each connection waits on its own, so a delayed message holds up no other.
    pub fn set_delay(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.shared.delay_us.store(micros, Ordering::SeqCst);
    }

    /// Completed messages waiting for their reply now (see [`SmtpSink::set_delay`] and
    /// [`SmtpSink::hold`]).
    pub fn waiting(&self) -> u32 {
        self.shared.waiting.load(Ordering::SeqCst)
    }

    /// The most completed messages that waited for their reply at once (see
    /// [`SmtpSink::set_delay`] and [`SmtpSink::hold`]).
    pub fn peak_waiting(&self) -> u32 {
        self.shared.peak_waiting.load(Ordering::SeqCst)
    }

    /// Forgets the accepted messages and starts the counts again: [`SmtpSink::connections`] from
    /// 0, [`SmtpSink::peak_connections`] and [`SmtpSink::peak_waiting`] from what is open or
    /// waiting now. A message completed before and answered after is answered but not recorded.
    pub fn reset(&self) {
        let shared = &self.shared;
        shared.mails.send_modify(|mails| {
            shared.epoch.fetch_add(1, Ordering::SeqCst);
            mails.clear();
        });
        shared.connections.store(0, Ordering::SeqCst);
        shared
            .peak_open
            .store(shared.open.load(Ordering::SeqCst), Ordering::SeqCst);
        shared
            .peak_waiting
            .store(shared.waiting.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Closes every open connection without a word, as a server does with idle clients; wait
    /// for [`SmtpSink::open_connections`] to reach 0 to know it is done.
    pub fn hang_up_all(&self) {
        self.shared
            .hang_up
            .send_modify(|generation| *generation += 1);
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every connection task.
        self.accept_task.abort();
    }
}

impl ReceivedMail {
    /// Parses [`ReceivedMail::data`] with mail-parser; panics if it is not a message at all.
    pub fn parsed(&self) -> ParsedMail {
        let Some(message) = MessageParser::default().parse(self.data.as_bytes()) else {
            panic!(
                "SMTP sink: mail-parser could not parse the message data: {:?}",
                self.data
            );
        };
        let to = message
            .all_to()
            .flat_map(|address| address.iter())
            .filter_map(|addr| addr.address())
            .map(str::to_owned)
            .collect();
        let from = message
            .from()
            .and_then(|address| address.first())
            .and_then(|addr| addr.address())
            .unwrap_or_default()
            .to_owned();
        let text = message
            .text_bodies()
            .find(|part| {
                part.is_text()
                    && !part.is_text_html()
                    && part.content_type().is_none_or(|ct| {
                        ct.subtype().is_none_or(|s| s.eq_ignore_ascii_case("plain"))
                    })
            })
            .and_then(|part| part.text_contents())
            .unwrap_or_default()
            .to_owned();
        let html = message
            .html_bodies()
            .find(|part| part.is_text_html())
            .and_then(|part| part.text_contents())
            .unwrap_or_default()
            .to_owned();
        let content_type = message.content_type().map_or_else(
            || "text/plain".to_owned(),
            |ct| match ct.subtype() {
                Some(subtype) => format!("{}/{}", ct.ctype(), subtype).to_ascii_lowercase(),
                None => ct.ctype().to_ascii_lowercase(),
            },
        );
        let headers = message
            .headers_raw()
            .map(|(name, value)| (name.to_owned(), unfold(value)))
            .collect();
        ParsedMail {
            subject: message.subject().unwrap_or_default().to_owned(),
            to,
            from,
            message_id: message.message_id().unwrap_or_default().to_owned(),
            text,
            html,
            content_type,
            headers,
        }
    }
}

impl ParsedMail {
    /// The value of the first top-level header called `name` (ASCII case-insensitive), as in [`ParsedMail::headers`].
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Unfolds a raw header value (line breaks followed by white space become one space) and trims it.
fn unfold(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for (i, line) in raw.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if i > 0 && !line.trim().is_empty() {
            out.push(' ');
            out.push_str(line.trim_start());
        } else {
            out.push_str(line);
        }
    }
    out.trim().to_owned()
}
