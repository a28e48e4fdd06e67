//! An in-process SMTP server over real TCP that records the mail it accepts, with fault injection, for tests.
//!
//! It speaks the part of RFC 5321 that lettre's async SMTP transport uses over plain
//! `smtp://` (no TLS, no PIPELINING): the greeting, EHLO/HELO, AUTH PLAIN (only when
//! [`SmtpSink::require_auth`] asked for it), MAIL, RCPT, DATA (with dot-unstuffing), RSET, NOOP,
//! VRFY and QUIT. Every accepted connection is served by its
//! own task; dropping the [`SmtpSink`] stops the listener and every connection task.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::{Engine as _, prelude::BASE64_STANDARD};
use mail_parser::{MessageParser, MimeHeaders};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The name the sink gives itself in its greeting and its EHLO reply.
const SERVER_NAME: &str = "resetmail-sink";

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
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap_or_else(|e| panic!("SMTP sink: cannot bind 127.0.0.1:0: {e}"));
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

    /// Waits until at least `n` messages were accepted and returns them all; panics if that takes longer than `within`.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<ReceivedMail> {
        let mut rx = self.shared.mails.subscribe();
        let waited = tokio::time::timeout(within, async {
            rx.wait_for(|mails| mails.len() >= n)
                .await
                .map(|mails| mails.clone())
        })
        .await;
        match waited {
            Ok(Ok(mails)) => mails,
            Ok(Err(_)) => panic!("SMTP sink: state closed while waiting for {n} messages"),
            Err(_) => {
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

    /// The number of TCP connections accepted so far, including those refused with `421` while down.
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

    /// The most connections open at once so far.
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

/// Accepts connections and serves each on its own task until aborted.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    let open = shared.open.fetch_add(1, Ordering::SeqCst) + 1;
                    shared.peak_open.fetch_max(open, Ordering::SeqCst);
                    connections.spawn(serve(stream, Arc::clone(&shared)));
                }
                // Typically too many open files: back off a little instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serves one connection; I/O errors just end it.
async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    // Best effort: replies are small and must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let mut hang_up = shared.hang_up.subscribe();
    tokio::select! {
        biased;
        _ = hang_up.changed() => {}
        _ = Session::new(&mut stream, &shared).run() => {}
    }
    let _ = stream.shutdown().await;
    drop(stream);
    shared.open.fetch_sub(1, Ordering::SeqCst);
}

/// What a connection does after a command.
enum Next {
    Continue,
    Close,
}

/// The SMTP state of one connection.
struct Session<'a> {
    reader: BufReader<tokio::net::tcp::ReadHalf<'a>>,
    writer: tokio::net::tcp::WriteHalf<'a>,
    shared: &'a Shared,
    greeted: bool,
    authenticated: bool,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
}

impl<'a> Session<'a> {
    fn new(stream: &'a mut TcpStream, shared: &'a Shared) -> Self {
        let (reader, writer) = stream.split();
        Self {
            reader: BufReader::new(reader),
            writer,
            shared,
            greeted: false,
            authenticated: false,
            mail_from: None,
            rcpt_to: Vec::new(),
        }
    }

    async fn run(mut self) -> io::Result<()> {
        if self.shared.is_down() {
            return self.reply(UNAVAILABLE).await;
        }
        self.reply(&format!("220 {SERVER_NAME} ESMTP ready"))
            .await?;
        let mut line = Vec::new();
        loop {
            line.clear();
            if self.reader.read_until(b'\n', &mut line).await? == 0 {
                return Ok(());
            }
            if self.shared.is_down() {
                return self.reply(UNAVAILABLE).await;
            }
            let text = String::from_utf8_lossy(&line);
            let command = text.trim_end_matches(['\r', '\n']);
            match self.command(command).await? {
                Next::Continue => {}
                Next::Close => return Ok(()),
            }
        }
    }

    async fn reply(&mut self, line: &str) -> io::Result<()> {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await
    }

    fn reset(&mut self) {
        self.mail_from = None;
        self.rcpt_to.clear();
    }

    async fn command(&mut self, command: &str) -> io::Result<Next> {
        let (verb, argument) = command
            .split_once(' ')
            .map_or((command, ""), |(verb, argument)| (verb, argument.trim()));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" if argument.is_empty() => self.reply("501 5.5.4 Syntax: EHLO domain").await?,
            "EHLO" => {
                self.reset();
                self.greeted = true;
                let auth = if self.shared.credentials().is_some() {
                    "250-AUTH PLAIN\r\n"
                } else {
                    ""
                };
                let reply = format!(
                    "250-{SERVER_NAME} Hello {argument}\r\n{auth}250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE {MAX_MESSAGE_SIZE}"
                );
                self.reply(&reply).await?;
            }
            "HELO" if argument.is_empty() => self.reply("501 5.5.4 Syntax: HELO domain").await?,
            "HELO" => {
                self.reset();
                self.greeted = true;
                self.reply(&format!("250 {SERVER_NAME} Hello {argument}"))
                    .await?;
            }
            "AUTH" => self.auth(argument).await?,
            "MAIL" => self.mail(argument).await?,
            "RCPT" => self.rcpt(argument).await?,
            "DATA" => return self.data().await,
            "RSET" => {
                self.reset();
                self.reply("250 2.0.0 OK").await?;
            }
            "NOOP" => self.reply("250 2.0.0 OK").await?,
            "VRFY" => {
                self.reply(
                    "252 2.1.5 Cannot VRFY user, but will accept message and attempt delivery",
                )
                .await?;
            }
            "QUIT" => {
                self.reply(&format!("221 2.0.0 {SERVER_NAME} Bye")).await?;
                return Ok(Next::Close);
            }
            _ => self.reply("500 5.5.2 Command not recognized").await?,
        }
        Ok(Next::Continue)
    }

    /// `AUTH PLAIN <base64 of \0user\0password>`, the initial-response form lettre sends.
    async fn auth(&mut self, argument: &str) -> io::Result<()> {
        let Some(expected) = self.shared.credentials() else {
            return self.reply("502 5.5.1 AUTH not supported").await;
        };
        if !self.greeted {
            return self.reply("503 5.5.1 Send EHLO first").await;
        }
        let Some(response) = argument
            .split_once(' ')
            .filter(|(mechanism, _)| mechanism.eq_ignore_ascii_case("PLAIN"))
            .map(|(_, response)| response.trim())
        else {
            return self
                .reply("504 5.5.4 Only AUTH PLAIN with an initial response")
                .await;
        };
        let given = BASE64_STANDARD.decode(response).ok().and_then(|bytes| {
            let mut parts = bytes.split(|byte| *byte == 0).skip(1);
            let user = String::from_utf8(parts.next()?.to_vec()).ok()?;
            let password = String::from_utf8(parts.next()?.to_vec()).ok()?;
            Some((user, password))
        });
        if given.as_ref() == Some(&expected) {
            self.authenticated = true;
            self.shared.logins.fetch_add(1, Ordering::SeqCst);
            self.reply("235 2.7.0 Authentication successful").await
        } else {
            self.reply("535 5.7.8 Authentication credentials invalid")
                .await
        }
    }

    async fn mail(&mut self, argument: &str) -> io::Result<()> {
        if !self.greeted {
            return self.reply("503 5.5.1 Send EHLO or HELO first").await;
        }
        if !self.authenticated && self.shared.credentials().is_some() {
            return self.reply("530 5.7.0 Authentication required").await;
        }
        if self.mail_from.is_some() {
            return self.reply("503 5.5.1 Nested MAIL command").await;
        }
        match path_argument(argument, "FROM:") {
            Some(address) => {
                self.mail_from = Some(address);
                self.reply("250 2.1.0 OK").await
            }
            None => self.reply("501 5.5.4 Syntax: MAIL FROM:<address>").await,
        }
    }

    async fn rcpt(&mut self, argument: &str) -> io::Result<()> {
        if self.mail_from.is_none() {
            return self.reply("503 5.5.1 Need MAIL before RCPT").await;
        }
        let Some(address) = path_argument(argument, "TO:").filter(|a| !a.is_empty()) else {
            return self.reply("501 5.5.4 Syntax: RCPT TO:<address>").await;
        };
        let rejection = self
            .shared
            .faults()
            .rejected_recipients
            .get(&address.to_ascii_lowercase())
            .cloned();
        match rejection {
            Some(reply) => self.reply(&reply.line()).await,
            None => {
                self.rcpt_to.push(address);
                self.reply("250 2.1.5 OK").await
            }
        }
    }

    async fn data(&mut self) -> io::Result<Next> {
        let Some(mail_from) = self.mail_from.clone() else {
            self.reply("503 5.5.1 Need MAIL before DATA").await?;
            return Ok(Next::Continue);
        };
        if self.rcpt_to.is_empty() {
            self.reply("554 5.5.1 No valid recipients").await?;
            return Ok(Next::Continue);
        }
        self.reply("354 Start mail input; end with <CRLF>.<CRLF>")
            .await?;

        let mut data = Vec::new();
        let mut too_big = false;
        let mut line = Vec::new();
        loop {
            line.clear();
            if self.reader.read_until(b'\n', &mut line).await? == 0 {
                // The client went away mid-message: nothing was delivered.
                return Ok(Next::Close);
            }
            if line == b".\r\n" || line == b".\n" {
                break;
            }
            let unstuffed = line.strip_prefix(b".").unwrap_or(&line);
            if data.len() + unstuffed.len() > MAX_MESSAGE_SIZE {
                too_big = true;
            } else {
                data.extend_from_slice(unstuffed);
            }
        }

        self.shared.attempts.fetch_add(1, Ordering::SeqCst);
        let rcpt_to = std::mem::take(&mut self.rcpt_to);
        self.reset();
        if self.shared.is_down() {
            self.reply(UNAVAILABLE).await?;
            return Ok(Next::Close);
        }
        if too_big {
            self.reply("552 5.3.4 Message size exceeds fixed maximum message size")
                .await?;
            return Ok(Next::Continue);
        }
        if *self.shared.gate.borrow() != Gate::Open {
            self.shared.held.send_modify(|held| *held += 1);
            let mut gate = self.shared.gate.subscribe();
            let passed = gate
                .wait_for(|gate| *gate != Gate::Hold)
                .await
                .map(|gate| *gate);
            self.shared.held.send_modify(|held| *held -= 1);
            if !matches!(passed, Ok(Gate::Open)) {
                return Ok(Next::Close);
            }
        }
        let failure = self.shared.faults().data_failures.pop_front();
        if let Some(reply) = failure {
            self.reply(&reply.line()).await?;
            return Ok(Next::Continue);
        }
        let mail = ReceivedMail {
            mail_from,
            rcpt_to,
            data: String::from_utf8_lossy(&data).into_owned(),
        };
        // Record before answering, so a client that saw 250 always finds its message here.
        let mut queued = 0;
        self.shared.mails.send_modify(|mails| {
            mails.push(mail);
            queued = mails.len();
        });
        self.reply(&format!("250 2.0.0 OK queued as {queued}"))
            .await?;
        Ok(Next::Continue)
    }
}

/// Parses `FROM:<path> params` or `TO:<path> params` (keyword ASCII case-insensitive) into the bare path.
fn path_argument(argument: &str, keyword: &str) -> Option<String> {
    let head = argument.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = argument.get(keyword.len()..)?.trim_start();
    if let Some(bracketed) = rest.strip_prefix('<') {
        let end = bracketed.find('>')?;
        Some(bracketed[..end].to_owned())
    } else {
        rest.split_whitespace().next().map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
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
                "<p>Bonjour, <a href=\"https://example.test/reset?token=abc\">reset</a></p>"
                    .to_owned(),
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
            code(exchange(&mut r, &mut w, "RCPT TO: <R@example.test> NOTIFY=NEVER").await)
                .as_deref(),
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
}
