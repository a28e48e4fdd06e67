//! Load generators: closed loops of clients (HTTP to the api, raw confirmed publishes to the broker)
//! and an open loop at a fixed rate, plus the figures drawn from their latencies.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use http_body_util::{BodyExt as _, Full};
use hyper::{Request, body::Bytes, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use resetmail_shared::{EmailAddress, Job, PasswordResetJob, amqp, topology::Topology};
use time::OffsetDateTime;
use tokio::net::TcpStream;
use uuid::Uuid;

/// Requests per second and latency percentiles of one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Figures {
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub count: usize,
    pub failed: usize,
}

impl Figures {
    pub fn from_latencies(mut latencies: Vec<Duration>, failed: usize, window: Duration) -> Self {
        latencies.sort_unstable();
        Self {
            per_second: latencies.len() as f64 / window.as_secs_f64(),
            p50_ms: percentile_ms(&latencies, 0.50),
            p99_ms: percentile_ms(&latencies, 0.99),
            count: latencies.len(),
            failed,
        }
    }
}

/// The `q` quantile of sorted `values` (nearest rank), in milliseconds; 0 when empty.
pub fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

/// The median of some numbers (the mean of the middle two for an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// One client of a closed loop: does one operation, says whether it succeeded.
pub trait Client: Send + 'static {
    fn call(&mut self) -> impl Future<Output = bool> + Send;
}

/// Runs every client in a loop for `warmup + window`; what starts within the window is counted.
pub async fn closed_loop<C: Client>(
    clients: Vec<C>,
    warmup: Duration,
    window: Duration,
) -> Figures {
    let begin = Instant::now() + warmup;
    let end = begin + window;
    let mut tasks = tokio::task::JoinSet::new();
    for mut client in clients {
        tasks.spawn(async move {
            let (mut latencies, mut failed) = (Vec::new(), 0);
            loop {
                let started = Instant::now();
                if started >= end {
                    return (latencies, failed);
                }
                let ok = client.call().await;
                if started >= begin {
                    if ok {
                        latencies.push(started.elapsed());
                    } else {
                        failed += 1;
                    }
                }
            }
        });
    }
    let (mut latencies, mut failed) = (Vec::new(), 0);
    while let Some(Ok((mut more, more_failed))) = tasks.join_next().await {
        latencies.append(&mut more);
        failed += more_failed;
    }
    Figures::from_latencies(latencies, failed, window)
}

/// The api's route that asks for a reset email.
pub const RESET_PATH: &str = "/api/v4/user/reset";

/// A kept-alive HTTP/1.1 connection to the api that asks for reset emails (or to any of
/// resetmail's HTTP ports, for [`HttpClient::get`]).
pub struct HttpClient {
    sender: SendRequest<Full<Bytes>>,
    host: String,
    /// Addresses for the closed loop: `{prefix}{n}@bench.example`.
    prefix: String,
    next: Arc<AtomicUsize>,
}

impl HttpClient {
    pub async fn connect(
        addr: SocketAddr,
        prefix: &str,
        next: Arc<AtomicUsize>,
    ) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self {
            sender,
            host: addr.to_string(),
            prefix: prefix.into(),
            next,
        })
    }

    /// Asks for a reset email to `email`; true when the answer is HTTP 200 with code 0.
    pub async fn reset(&mut self, email: &str) -> bool {
        let body = serde_json::json!({ "email": email }).to_string();
        let Some((status, body)) = self.exchange("POST", RESET_PATH, Some(body)).await else {
            return false;
        };
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|answer| answer.get("code").and_then(serde_json::Value::as_i64));
        status.is_success() && code == Some(0)
    }

    /// `GET path`: the answer's status, or `None` when the exchange failed.
    pub async fn get(&mut self, path: &str) -> Option<hyper::StatusCode> {
        self.exchange("GET", path, None)
            .await
            .map(|(status, _)| status)
    }

    /// `GET path`: the answer's body as text when the status is 200, else `None`.
    pub async fn text(&mut self, path: &str) -> Option<String> {
        let (status, body) = self.exchange("GET", path, None).await?;
        status
            .is_success()
            .then(|| String::from_utf8_lossy(&body).into_owned())
    }

    /// One request on the kept-alive connection (a JSON body when there is one), and its answer.
    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Option<(hyper::StatusCode, Bytes)> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host);
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .ok()?;
        self.sender.ready().await.ok()?;
        let response = self.sender.send_request(request).await.ok()?;
        let status = response.status();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, body))
    }
}

impl Client for HttpClient {
    async fn call(&mut self) -> bool {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let email = format!("{}{n}@bench.example", self.prefix);
        self.reset(&email).await
    }
}

/// The baseline of the api: a job published with a confirm, on one channel shared by every
/// client as the api shares its own, with the same properties the api gives it.
pub struct PublishClient {
    pub channel: lapin::Channel,
    pub queue: String,
}

impl Client for PublishClient {
    async fn call(&mut self) -> bool {
        let job = job(&format!("p{}@bench.example", Uuid::new_v4().simple()));
        amqp::publish_confirmed(
            &self.channel,
            "",
            &self.queue,
            &job.encode().unwrap_or_default(),
            amqp::job_properties(&job),
        )
        .await
        .is_ok()
    }
}

/// A password reset job for `email`, as the api makes it.
pub fn job(email: &str) -> Job {
    Job::PasswordReset(PasswordResetJob {
        job_id: Uuid::new_v4(),
        email: EmailAddress::parse(email).unwrap_or_else(|error| panic!("{email}: {error}")),
        correlation_id: Uuid::new_v4(),
        requested_at: OffsetDateTime::now_utc(),
    })
}

/// Publishes one job per address with up to 64 confirms in flight.
pub async fn publish_jobs(
    channel: &lapin::Channel,
    topology: &Topology,
    emails: Vec<String>,
) -> anyhow::Result<()> {
    let queue = topology.work_queue();
    let emails = Arc::new(std::sync::Mutex::new(emails));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (channel, queue, emails) = (channel.clone(), queue.clone(), Arc::clone(&emails));
        tasks.spawn(async move {
            loop {
                let email = emails
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .pop();
                let Some(email) = email else {
                    return anyhow::Ok(());
                };
                let job = job(&email);
                let properties = amqp::job_properties(&job);
                amqp::publish_confirmed(&channel, "", &queue, &job.encode()?, properties).await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// How long after [`open_loop`] is called its first request is due.
pub const OPEN_LOOP_LEAD: Duration = Duration::from_millis(50);

/// An open loop: request `i` (address `{prefix}{i}@bench.example`) is due at `start + i / rate`
/// whatever happened to the others, sent on the first free connection. Returns when each was due
/// (latencies count from there, so a slow answer cannot hide the requests queued behind it) and
/// how many were not answered with code 0.
pub async fn open_loop(
    clients: Vec<HttpClient>,
    prefix: &str,
    rate: f64,
    total: usize,
) -> OpenLoop {
    let start = Instant::now() + OPEN_LOOP_LEAD;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for mut client in clients {
        let (next, prefix) = (Arc::clone(&next), prefix.to_owned());
        tasks.spawn(async move {
            let mut answered = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return answered;
                }
                tokio::time::sleep_until(due(start, rate, i).into()).await;
                if client.reset(&format!("{prefix}{i}@bench.example")).await {
                    answered.push((i, Instant::now()));
                }
            }
        });
    }
    let mut answered = vec![None; total];
    while let Some(Ok(more)) = tasks.join_next().await {
        for (i, at) in more {
            answered[i] = Some(at);
        }
    }
    OpenLoop { start, answered }
}

/// What an [`open_loop`] did.
pub struct OpenLoop {
    /// When its first request was due.
    pub start: Instant,
    /// When each request was answered code 0, by its index; `None` when it was not.
    pub answered: Vec<Option<Instant>>,
}

impl OpenLoop {
    /// Requests not answered code 0.
    pub fn failed(&self) -> usize {
        self.answered.iter().filter(|at| at.is_none()).count()
    }
}

/// When request `i` of an open loop that started at `start` was due.
pub fn due(start: Instant, rate: f64, i: usize) -> Instant {
    start + Duration::from_secs_f64(i as f64 / rate)
}
