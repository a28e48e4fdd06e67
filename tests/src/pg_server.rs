//! `TestPgServer`: a PostgreSQL server of the test's own (`initdb` into a temporary directory, on a
//! free port), so that a test can stop and start it under running binaries without touching the
//! server every other test uses. Stopped and removed when the test ends.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
};

use uuid::Uuid;

/// A private PostgreSQL server; stopped (immediately) and removed when dropped.
pub struct TestPgServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl TestPgServer {
    /// Creates a cluster with `initdb` (trust authentication, no fsync: it is thrown away) and starts
    /// it on a free port.
    pub async fn start() -> TestPgServer {
        let dir = std::env::temp_dir().join(format!("resetmail-pg-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|error| panic!("cannot create {dir:?}: {error}"));
        let server = TestPgServer {
            bin: bin_dir(),
            dir,
            port: TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .map(|addr| addr.port())
                .unwrap_or_else(|error| panic!("no free port: {error}")),
        };
        if running_as_root() {
            // PostgreSQL refuses to run as root: the server's files belong to `postgres`.
            run(
                "chown",
                &["-R", "postgres:postgres", &server.dir.to_string_lossy()],
            )
            .await;
        }
        let data = server.data();
        server
            .pg(
                "initdb",
                &[
                    "-D",
                    &data,
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ],
            )
            .await;
        server.up().await;
        server
    }

    /// The server's URL, without a database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Stops the server as an operator's restart does (`pg_ctl stop -m fast`: sessions are ended,
    /// new connections refused until [`TestPgServer::up`]).
    pub async fn down(&self) {
        self.pg("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"])
            .await;
    }

    /// Starts the server (again), and returns once it accepts connections.
    pub async fn up(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=50",
            self.port,
            self.dir.to_string_lossy()
        );
        let log = self.dir.join("server.log");
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log.to_string_lossy(),
                "-w",
                "start",
            ],
        )
        .await;
    }

    fn data(&self) -> String {
        self.dir.join("data").to_string_lossy().into_owned()
    }

    async fn pg(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let program = program.to_string_lossy();
        if running_as_root() {
            let mut all = vec!["-u", "postgres", "--", &program];
            all.extend_from_slice(args);
            run("runuser", &all).await;
        } else {
            run(&program, args).await;
        }
    }
}

impl Drop for TestPgServer {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data();
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let _ = if running_as_root() {
            std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&pg_ctl)
                .args(args)
                .output()
        } else {
            std::process::Command::new(&pg_ctl).args(args).output()
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where `initdb` and `pg_ctl` are: `RESETMAIL_TEST_PG_BINDIR`, else the newest of Debian's
/// `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RESETMAIL_TEST_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse().ok()?;
            let bin = entry.path().join("bin");
            Path::new(&bin.join("initdb"))
                .exists()
                .then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!("no initdb under /usr/lib/postgresql; set RESETMAIL_TEST_PG_BINDIR")
    })
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

async fn run(program: &str, args: &[&str]) {
    let output = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
