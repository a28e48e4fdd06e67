//! `Process`: one of resetmail's binaries run as operators run it — a child process configured by
//! environment variables — with its standard error captured line by line and its standard output
//! kept apart, so that tests can read its logs, signal it and watch it stop.

use std::{
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, BufReader},
    process::{Child, Command},
    sync::watch,
};

/// The path of the workspace binary `name` (`resetmail-api`, `resetmail-worker`), built beside the
/// test binary: `cargo nextest run --workspace` builds both, for their own packages' tests.
pub fn binary(name: &str) -> String {
    let built = std::env::current_exe()
        .ok()
        .and_then(|test| Some(test.parent()?.parent()?.join(name)))
        .filter(|path| path.exists())
        .unwrap_or_else(|| {
            panic!("{name} is not built beside this test; run the workspace's tests, or `cargo build -p {name}`")
        });
    built.to_string_lossy().into_owned()
}

/// A running binary; killed when dropped.
pub struct Process {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_lines: watch::Sender<usize>,
    stdout: Arc<Mutex<Vec<String>>>,
    /// The tasks reading the pipes; they end when the process has closed them.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Process {
    /// Starts `binary` with `args` and exactly the environment `env` (plus `PATH`), nothing
    /// inherited: a variable set on the test runner must not change what is under test.
    pub fn start(binary: &str, args: &[&str], env: &[(&str, String)]) -> Process {
        let mut command = Command::new(binary);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {binary}: {error}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr_lines = watch::Sender::new(0);
        let mut readers = Vec::new();
        if let Some(pipe) = child.stderr.take() {
            readers.push(tokio::spawn(collect(
                pipe,
                stderr.clone(),
                Some(stderr_lines.clone()),
            )));
        }
        if let Some(pipe) = child.stdout.take() {
            readers.push(tokio::spawn(collect(pipe, stdout.clone(), None)));
        }
        Process {
            child,
            stderr,
            stderr_lines,
            stdout,
            readers,
        }
    }

    /// The operating system's id of the process.
    pub fn pid(&self) -> u32 {
        self.child
            .id()
            .unwrap_or_else(|| panic!("the process has already been reaped"))
    }

    /// Every line written to standard error so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every line written to standard output so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until a line of standard error satisfies `matches` and returns it; panics after
    /// `within`, showing what was written.
    pub async fn wait_for_line(
        &self,
        what: &str,
        within: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        let mut seen = self.stderr_lines.subscribe();
        let found = tokio::time::timeout(within, async {
            loop {
                if let Some(line) = self.stderr().into_iter().find(|line| matches(line)) {
                    return Some(line);
                }
                if seen.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!(
                "no log line {what} within {within:?}; the process wrote:\n{}",
                self.stderr().join("\n")
            ),
        }
    }

    /// Sends `SIGTERM`, as an orchestrator stopping the process does.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal `name` (`TERM`, `HUP`, …).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap_or_else(|error| panic!("cannot run kill: {error}"));
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Waits for the process to exit and for everything it wrote to be read; panics after
    /// `within`, showing what it wrote.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let readers = std::mem::take(&mut self.readers);
        let exited = async {
            let status = self.child.wait().await;
            for reader in readers {
                let _ = reader.await;
            }
            status
        };
        match tokio::time::timeout(within, exited).await {
            Ok(Ok(status)) => status,
            Ok(Err(error)) => panic!("cannot wait for the process: {error}"),
            Err(_) => panic!(
                "the process did not exit within {within:?}; it wrote:\n{}",
                self.stderr().join("\n")
            ),
        }
    }

    /// Sends `SIGTERM` and waits for a clean exit (status 0) with nothing on standard output; the
    /// lines it logged.
    pub async fn stop_cleanly(&mut self, within: Duration) -> Vec<String> {
        self.terminate();
        let exit = self.wait_exit(within).await;
        assert!(
            exit.success(),
            "exit {exit:?} after SIGTERM:\n{}",
            self.stderr().join("\n")
        );
        assert!(
            self.stdout().is_empty(),
            "logs belong on stderr, stdout got: {:?}",
            self.stdout()
        );
        self.stderr()
    }

    /// Waits like [`Process::wait_exit`], reading the process's peak resident memory (`VmHWM`, its
    /// own high-water mark) every few milliseconds meanwhile; the exit status and the last figure
    /// read, in bytes (0 if it exited before any could be read).
    pub async fn wait_exit_with_peak_rss(&mut self, within: Duration) -> (ExitStatus, u64) {
        let deadline = tokio::time::Instant::now() + within;
        let mut peak = 0;
        loop {
            if let Some(now) = self.peak_rss_bytes() {
                peak = peak.max(now);
            }
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if tokio::time::Instant::now() >= deadline => panic!(
                    "the process did not exit within {within:?} (peak RSS so far {peak} bytes); \
                     it wrote:\n{}",
                    self.stderr().join("\n")
                ),
                // Sampling, not waiting for an event: the figure only grows while it runs.
                Ok(None) => tokio::time::sleep(Duration::from_millis(2)).await,
                Err(error) => panic!("cannot wait for the process: {error}"),
            }
        }
        (self.wait_exit(within).await, peak)
    }

    /// The process's peak resident memory so far, in bytes (`VmHWM`), while it runs.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()?)).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }
}

/// Reads `pipe` line by line into `lines` until it closes, telling `count` of each new line.
async fn collect(
    pipe: impl AsyncRead + Unpin,
    lines: Arc<Mutex<Vec<String>>>,
    count: Option<watch::Sender<usize>>,
) {
    let mut reader = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = reader.next_line().await {
        let total = {
            let mut lines = lines.lock().unwrap_or_else(PoisonError::into_inner);
            lines.push(line);
            lines.len()
        };
        if let Some(count) = &count {
            count.send_replace(total);
        }
    }
}

/// Checks the lines of one log format: for `json`, each an object with a level and a message; for
/// `pretty`, no colour codes (the output is a pipe, not a terminal).
pub fn assert_log_format(format: &str, lines: &[String]) {
    for line in lines {
        if format == "json" {
            let parsed: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("not a JSON log line ({error}): {line}"));
            assert!(
                parsed["level"].is_string() && parsed["message"].is_string(),
                "{line}"
            );
        } else {
            assert!(
                !line.contains('\u{1b}'),
                "colour codes in a piped log: {line}"
            );
        }
    }
}

/// Panics if `secret` stands in `logs` in any form a logger might print it: as text, as a list of
/// byte values (`Debug` of a byte string), in hex, or as any of `encodings` (e.g. an SMTP
/// `AUTH PLAIN` response).
pub fn assert_secret_absent(logs: &str, what: &str, secret: &str, encodings: &[String]) {
    let bytes: Vec<String> = secret.bytes().map(|byte| byte.to_string()).collect();
    let hex: String = secret.bytes().map(|byte| format!("{byte:02x}")).collect();
    let forms = [secret.to_owned(), bytes.join(", "), hex];
    for needle in forms.iter().chain(encodings) {
        assert!(
            !logs.contains(needle.as_str()),
            "{what} is in the logs as {needle:?}"
        );
    }
}

/// The value of the field `name` on a log line, JSON (one object per line) or pretty
/// (`name=value`, without colour codes).
pub fn log_field(line: &str, name: &str) -> Option<String> {
    if let Ok(serde_json::Value::Object(object)) = serde_json::from_str(line) {
        return object.get(name).map(|value| match value {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        });
    }
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    Some(
        line[start..]
            .chars()
            .take_while(|c| !c.is_whitespace())
            .collect(),
    )
}

/// `GET path` over HTTP/1.0 on `addr` (as a load balancer's health check does); the status code and
/// the body. Panics if nothing answers within `within`.
pub async fn http_get(addr: &str, path: &str, within: Duration) -> (u16, String) {
    http(addr, "GET", path, None, within).await
}

/// `POST path` with a JSON `body` over HTTP/1.0 on `addr`; the status code and the body.
pub async fn http_post_json(addr: &str, path: &str, body: &str, within: Duration) -> (u16, String) {
    http(addr, "POST", path, Some(body), within).await
}

async fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    within: Duration,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        request.push_str("\r\n");
    }
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        std::io::Result::Ok(answer)
    };
    let answer = match tokio::time::timeout(within, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => panic!("{method} http://{addr}{path}: {error}"),
        Err(_) => panic!("{method} http://{addr}{path}: no answer within {within:?}"),
    };
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("{method} http://{addr}{path}: not HTTP: {answer}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    (status, body)
}
