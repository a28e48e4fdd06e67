//! The SMTP side of the sink: the accept loop, and one session per connection.

use std::io;

use base64::{Engine as _, prelude::BASE64_STANDARD};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::*;

/// Accepts connections and serves each on its own task until aborted.
pub(super) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
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
    /// Messages this connection carried (answered `250`).
    carried: u32,
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
            carried: 0,
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
            "MAIL" => {
                let limit = self.shared.per_connection.load(Ordering::SeqCst);
                if limit > 0 && self.carried >= limit {
                    self.reply("421 4.7.0 Too many messages on this connection")
                        .await?;
                    return Ok(Next::Close);
                }
                self.mail(argument).await?;
            }
            "RCPT" => self.rcpt(argument).await?,
            "DATA" => return self.data().await,
            "RSET" => {
                self.reset();
                self.reply("250 2.0.0 OK").await?;
            }
            "NOOP" => {
                self.shared.noops.fetch_add(1, Ordering::SeqCst);
                self.reply("250 2.0.0 OK").await?;
            }
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

    /// Waits as long as a completed message must before its answer: the relay delay, then the
    /// gate of [`SmtpSink::hold`]; false if the message is to be dropped unanswered.
    async fn wait_to_answer(&self) -> bool {
        let _waiting = Waiting::new(self.shared);
        let delay = Duration::from_micros(self.shared.delay_us.load(Ordering::SeqCst));
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if *self.shared.gate.borrow() == Gate::Open {
            return true;
        }
        self.shared.held.send_modify(|held| *held += 1);
        let mut gate = self.shared.gate.subscribe();
        let passed = gate
            .wait_for(|gate| *gate != Gate::Hold)
            .await
            .map(|gate| *gate);
        self.shared.held.send_modify(|held| *held -= 1);
        matches!(passed, Ok(Gate::Open))
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
        let epoch = self.shared.epoch.load(Ordering::SeqCst);
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
        if !self.wait_to_answer().await {
            return Ok(Next::Close);
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
            accepted_at: Instant::now(),
        };
        // Record before answering, so a client that saw 250 always finds its message here.
        let mut queued = 0;
        self.shared.mails.send_if_modified(|mails| {
            queued = mails.len() + 1;
            let current = self.shared.epoch.load(Ordering::SeqCst) == epoch;
            if current {
                mails.push(mail);
            }
            current
        });
        self.carried += 1;
        self.reply(&format!("250 2.0.0 OK queued as {queued}"))
            .await?;
        Ok(Next::Continue)
    }
}

/// Counts a completed message as waiting for its reply until dropped, however the wait ends.
struct Waiting<'a>(&'a Shared);

impl<'a> Waiting<'a> {
    fn new(shared: &'a Shared) -> Self {
        let now = shared.waiting.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak_waiting.fetch_max(now, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
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
