//! SMTP over connections this module opens itself, with `TCP_NODELAY`, kept in a small pool.
//!
//! lettre 0.11's own transport leaves Nagle's algorithm on and writes a message's final
//! `\r\n.\r\n` apart from its body, so every message waits for the server's delayed ACK (40 ms on
//! Linux) before the server even sees the end of it. Here lettre still speaks the protocol
//! (`AsyncSmtpConnection`: greeting, EHLO, STARTTLS, AUTH, MAIL/RCPT/DATA), but over a socket
//! configured by us. A broken connection is never parked and idle ones are closed after a while,
//! as in lettre's pool; unlike it, a kept connection is not checked with NOOP before each message
//! (a round trip per email on both sides): its MAIL FROM is the check. A kept connection whose
//! MAIL FROM fails (the server closed it while it was idle, or after its limit of messages per
//! connection) carried nothing yet, so the message goes at once on a fresh connection.

use std::{
    borrow::Cow,
    fmt, io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use lettre::{
    address::Envelope,
    transport::smtp::{
        self,
        authentication::{Credentials, Mechanism},
        client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters},
        commands::{Data, Mail, Rcpt},
        extension::{ClientId, Extension, MailBodyParameter, MailParameter},
    },
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::{Fault, MailError, classify};

/// A parked connection is closed when it has been idle this long (lettre's default too).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an idle connection being closed may take to answer QUIT.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the connection is protected, from the URL's scheme and `tls` parameter.
enum Security {
    /// `smtp://` without `tls`: plain text.
    None,
    /// `smtp://…?tls=required|opportunistic`: STARTTLS after the greeting.
    StartTls {
        parameters: TlsParameters,
        required: bool,
    },
    /// `smtps://`: TLS from the first byte.
    Implicit {
        connector: tokio_rustls::TlsConnector,
        server_name: rustls::pki_types::ServerName<'static>,
    },
}

/// An SMTP URL with lettre's syntax, `scheme://user:pass@host:port/ehlo-name?tls=required|opportunistic`,
/// checked when it is read (a URL [`Settings`] cannot use is refused then, not at the first send).
/// It may hold a password: its `Debug` form shows only the scheme, host and port, and no error
/// about it repeats it.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpUrl(url::Url);

impl SmtpUrl {
    /// Reads `text`; the error says what is wrong without repeating it.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::try_from(url::Url::parse(text.trim()).map_err(|error| error.to_string())?)
    }

    /// The URL, password included.
    pub fn as_url(&self) -> &url::Url {
        &self.0
    }
}

impl TryFrom<url::Url> for SmtpUrl {
    type Error = String;
    fn try_from(url: url::Url) -> Result<Self, String> {
        let url = Self(url);
        Settings::from_url(&url, Duration::ZERO)?;
        Ok(url)
    }
}

impl fmt::Debug for SmtpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = &self.0;
        write!(
            f,
            "SmtpUrl({}://{}",
            url.scheme(),
            url.host_str().unwrap_or_default()
        )?;
        if let Some(port) = url.port() {
            write!(f, ":{port}")?;
        }
        f.write_str(")")
    }
}

/// Where and how to connect, read from an [`SmtpUrl`].
pub struct Settings {
    host: String,
    port: u16,
    security: Security,
    hello_name: ClientId,
    credentials: Option<Credentials>,
    connect_timeout: Duration,
}

impl Settings {
    /// Reads `url`. The error never repeats the URL, which may hold a password.
    pub fn from_url(url: &SmtpUrl, connect_timeout: Duration) -> Result<Self, String> {
        let url = &url.0;
        let host = url
            .host_str()
            .ok_or("the SMTP host is missing")?
            // An IPv6 literal comes bracketed; connecting wants it bare.
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = url
            .query_pairs()
            .find(|(key, _)| key == "tls")
            .map(|(_, value)| value.into_owned());
        let starttls = |required| -> Result<Security, String> {
            Ok(Security::StartTls {
                parameters: TlsParameters::new(host.clone()).map_err(|e| e.to_string())?,
                required,
            })
        };
        let (default_port, security) = match (url.scheme(), tls.as_deref()) {
            ("smtp", None) => (25, Security::None),
            ("smtp", Some("required")) => (587, starttls(true)?),
            ("smtp", Some("opportunistic")) => (587, starttls(false)?),
            ("smtps", _) => (465, implicit_tls(&host)?),
            (scheme, tls) => {
                return Err(format!(
                    "unknown scheme `{scheme}` or tls parameter `{}` (smtp, smtp?tls=required, \
                     smtp?tls=opportunistic or smtps)",
                    tls.unwrap_or_default()
                ));
            }
        };
        let hello_name = match url.path().trim_matches('/') {
            "" => ClientId::default(),
            name => ClientId::Domain(name.to_owned()),
        };
        let credentials = match url.password() {
            Some(password) => Some(Credentials::new(
                percent_decode(url.username())?,
                percent_decode(password)?,
            )),
            None => None,
        };
        Ok(Self {
            port: url.port().unwrap_or(default_port),
            host,
            security,
            hello_name,
            credentials,
            connect_timeout,
        })
    }

    /// Opens one connection: TCP with `TCP_NODELAY`, TLS as configured, greeting, EHLO, AUTH.
    async fn connect(&self) -> Result<AsyncSmtpConnection, MailError> {
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| {
            classify(Fault::Connect(format!(
                "no connection to the SMTP server within {:?}",
                self.connect_timeout
            )))
        })?
        .map_err(|error| {
            classify(Fault::Connect(format!(
                "cannot connect to the SMTP server: {error}"
            )))
        })?;
        tcp.set_nodelay(true).map_err(|error| {
            classify(Fault::Connect(format!(
                "cannot set TCP_NODELAY on the SMTP connection: {error}"
            )))
        })?;
        let stream = match &self.security {
            Security::Implicit {
                connector,
                server_name,
            } => {
                let tls = connector
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(|error| classify(Fault::TlsHandshake(error.to_string())))?;
                Stream::Tls(Box::new(tls))
            }
            Security::None | Security::StartTls { .. } => Stream::Plain(tcp),
        };
        let mut connection =
            AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello_name)
                .await
                .map_err(|error| classify(Fault::Smtp(&error)))?;
        if let Security::StartTls {
            parameters,
            required,
        } = &self.security
        {
            if connection.can_starttls() {
                connection
                    .starttls(parameters.clone(), &self.hello_name)
                    .await
                    .map_err(|error| classify(Fault::Smtp(&error)))?;
            } else if *required {
                connection.abort().await;
                return Err(classify(Fault::NoStartTls));
            }
        }
        if let Some(credentials) = &self.credentials {
            connection
                .auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .map_err(|error| classify(Fault::Smtp(&error)))?;
        }
        Ok(connection)
    }
}

fn implicit_tls(host: &str) -> Result<Security, String> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|error| error.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let server_name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|error| format!("`{host}` cannot be checked against a certificate: {error}"))?;
    Ok(Security::Implicit {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name,
    })
}

fn percent_decode(text: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| "the SMTP user name or password is not UTF-8 once decoded".to_owned())
}

/// The socket lettre talks over: ours, so that `TCP_NODELAY` is set.
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncTokioStream for Stream {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Self::Plain(tcp) => tcp.peer_addr(),
            Self::Tls(tls) => tls.get_ref().0.peer_addr(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

struct Parked {
    connection: AsyncSmtpConnection,
    since: Instant,
}

struct Inner {
    settings: Settings,
    idle: Mutex<Vec<Parked>>,
    max_idle: usize,
}

/// Connections to one SMTP server, reused across messages.
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// A pool keeping at most `max_idle` idle connections (the cap on connections: a send holds
    /// one connection at a time, and at most that many sends run at once). Idle connections are swept every [`IDLE_TIMEOUT`] when a Tokio
    /// runtime is running.
    pub fn new(settings: Settings, max_idle: usize) -> Self {
        let inner = Arc::new(Inner {
            settings,
            idle: Mutex::new(Vec::new()),
            max_idle,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&inner)));
        }
        Self { inner }
    }

    /// Sends `message` for `envelope` on a pooled connection (a new one if none is idle). The
    /// connection goes back to the pool only after a successful send.
    pub async fn send(&self, envelope: &Envelope, message: &[u8]) -> Result<(), MailError> {
        let parked = lock(&self.inner.idle).pop();
        let (mut connection, kept) = match parked {
            Some(parked) if parked.since.elapsed() <= IDLE_TIMEOUT => (parked.connection, true),
            // Too old to trust: dropped without QUIT, like a broken one.
            _ => (self.inner.settings.connect().await?, false),
        };
        let mut sent = transmit(&mut connection, envelope, message).await;
        if let (true, Err(Failed::Mail(error))) = (kept, &sent)
            && !error.is_permanent()
        {
            tracing::debug!(%error, "a kept SMTP connection failed its MAIL FROM; sending on a fresh one");
            connection = self.inner.settings.connect().await?;
            sent = transmit(&mut connection, envelope, message).await;
        }
        match sent {
            Ok(()) => {
                self.park(connection).await;
                Ok(())
            }
            Err(Failed::Mail(error) | Failed::Later(error)) => {
                // A refusal (a reply with its code) leaves the connection speaking: QUIT it, as
                // lettre does. A broken one, or one that answered nonsense, is dropped.
                if error.status().is_some() {
                    let _ = tokio::time::timeout(QUIT_TIMEOUT, connection.abort()).await;
                }
                Err(classify(Fault::Smtp(&error)))
            }
            // Nothing was sent on it: the connection serves the next message.
            Err(Failed::Unsupported(fault)) => {
                self.park(connection).await;
                Err(classify(fault))
            }
        }
    }

    async fn park(&self, mut connection: AsyncSmtpConnection) {
        if connection.has_broken() {
            return;
        }
        {
            let mut idle = lock(&self.inner.idle);
            if idle.len() < self.inner.max_idle {
                idle.push(Parked {
                    connection,
                    since: Instant::now(),
                });
                return;
            }
        }
        // A surplus connection says QUIT rather than just vanish.
        let _ = tokio::time::timeout(QUIT_TIMEOUT, connection.abort()).await;
    }
}

/// How one message's transaction failed.
enum Failed {
    /// At MAIL FROM, the first command: nothing of the message has been sent.
    Mail(smtp::Error),
    /// At RCPT, DATA or the message itself.
    Later(smtp::Error),
    /// The message needs an extension the server does not offer.
    Unsupported(Fault<'static>),
}

/// One message's transaction, as lettre's `AsyncSmtpConnection::send` has it (the SMTPUTF8 and
/// 8BITMIME parameters where the envelope or the message needs them), but saying at which command
/// it failed.
async fn transmit(
    connection: &mut AsyncSmtpConnection,
    envelope: &Envelope,
    message: &[u8],
) -> Result<(), Failed> {
    let mut parameters = Vec::new();
    let non_ascii_address = envelope
        .to()
        .iter()
        .chain(envelope.from())
        .any(|address| !AsRef::<str>::as_ref(address).is_ascii());
    if non_ascii_address {
        if !connection
            .server_info()
            .supports_feature(Extension::SmtpUtfEight)
        {
            return Err(Failed::Unsupported(Fault::NoSmtpUtf8));
        }
        parameters.push(MailParameter::SmtpUtfEight);
    }
    if !message.is_ascii() {
        if !connection
            .server_info()
            .supports_feature(Extension::EightBitMime)
        {
            return Err(Failed::Unsupported(Fault::No8BitMime));
        }
        parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    connection
        .command(Mail::new(envelope.from().cloned(), parameters))
        .await
        .map_err(Failed::Mail)?;
    for recipient in envelope.to() {
        connection
            .command(Rcpt::new(recipient.clone(), Vec::new()))
            .await
            .map_err(Failed::Later)?;
    }
    connection.command(Data).await.map_err(Failed::Later)?;
    connection.message(message).await.map_err(Failed::Later)?;
    Ok(())
}

fn lock(idle: &Mutex<Vec<Parked>>) -> std::sync::MutexGuard<'_, Vec<Parked>> {
    // The list holds no invariant a panicking holder could break.
    idle.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Closes connections idle for longer than [`IDLE_TIMEOUT`], until the pool is dropped.
async fn sweep(pool: Weak<Inner>) {
    loop {
        tokio::time::sleep(IDLE_TIMEOUT).await;
        let Some(inner) = pool.upgrade() else { return };
        let expired: Vec<Parked> = {
            let mut idle = lock(&inner.idle);
            let (expired, kept) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|parked| parked.since.elapsed() > IDLE_TIMEOUT);
            *idle = kept;
            expired
        };
        drop(inner);
        for mut parked in expired {
            let quit = parked.connection.abort();
            let _ = tokio::time::timeout(QUIT_TIMEOUT, quit).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Settings, String> {
        Settings::from_url(&SmtpUrl::parse(url)?, Duration::from_secs(1))
    }

    #[test]
    fn an_smtp_url_is_refused_at_start_up_and_shown_without_its_password() {
        use clap::Parser as _;
        #[derive(clap::Parser, Debug)]
        struct Cli {
            #[arg(long, value_parser = resetmail_shared::config::SecretValue::new("RESETMAIL_SMTP_URL", SmtpUrl::parse))]
            smtp_url: SmtpUrl,
        }
        let error = Cli::try_parse_from(["worker", "--smtp-url", "smtp://me:s3cret@mx?tls=maybe"])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("invalid RESETMAIL_SMTP_URL: unknown scheme"),
            "{error}"
        );
        assert!(!error.contains("s3cret"), "{error}");

        let read = Cli::try_parse_from([
            "worker",
            "--smtp-url",
            "smtps://me:s3cret@mx.example.com:2465",
        ])
        .unwrap();
        assert_eq!(
            format!("{read:?}"),
            "Cli { smtp_url: SmtpUrl(smtps://mx.example.com:2465) }"
        );
        assert_eq!(read.smtp_url.as_url().password(), Some("s3cret"));
    }

    #[test]
    fn urls_read_like_lettres() -> Result<(), String> {
        let plain = parse("smtp://mail.example.com")?;
        assert_eq!((plain.host.as_str(), plain.port), ("mail.example.com", 25));
        assert!(matches!(plain.security, Security::None));
        assert!(plain.credentials.is_none());

        let submission =
            parse("smtp://user%40site:p%2Fss@mail.example.com/helo.example?tls=required")?;
        assert_eq!(submission.port, 587);
        assert!(matches!(
            submission.security,
            Security::StartTls { required: true, .. }
        ));
        assert_eq!(
            submission.hello_name,
            ClientId::Domain("helo.example".into())
        );
        assert_eq!(
            submission.credentials,
            Some(Credentials::new("user@site".into(), "p/ss".into()))
        );

        let opportunistic = parse("smtp://127.0.0.1:2525?tls=opportunistic")?;
        assert_eq!(opportunistic.port, 2525);
        assert!(matches!(
            opportunistic.security,
            Security::StartTls {
                required: false,
                ..
            }
        ));

        let implicit = parse("smtps://mail.example.com")?;
        assert_eq!(implicit.port, 465);
        assert!(matches!(implicit.security, Security::Implicit { .. }));

        let ipv6 = parse("smtp://[::1]:2525")?;
        assert_eq!(ipv6.host, "::1");
        Ok(())
    }

    #[test]
    fn bad_urls_are_refused_without_repeating_them() {
        for url in [
            "imap://user:secret@mail.example.com",
            "smtp://user:secret@mail.example.com?tls=sometimes",
            "not a url secret",
            "smtp:///nohost",
        ] {
            match parse(url) {
                Ok(_) => panic!("`{url}` was accepted"),
                Err(message) => assert!(!message.contains("secret"), "{message}"),
            }
        }
    }
}
