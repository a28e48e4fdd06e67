//! `TestCluster`: a three-node RabbitMQ cluster of the test's own, started by `scripts/cluster.sh`
//! on free ports with its data in a directory of its own, beside the machine's RabbitMQ; its nodes
//! can be killed (SIGKILL) and started again; stopped and removed when the test ends.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Output,
};

use uuid::Uuid;

/// The repository's `scripts/cluster.sh`.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh")
}

/// A running three-node cluster; stopped and its directory removed when dropped.
pub struct TestCluster {
    dir: PathBuf,
    base_port: u16,
}

impl TestCluster {
    /// Starts three nodes on free ports and joins them (tens of seconds on a small machine).
    pub async fn start() -> TestCluster {
        let dir =
            std::env::temp_dir().join(format!("resetmail-cluster-{}", Uuid::new_v4().simple()));
        let cluster = TestCluster {
            dir,
            base_port: free_base_port(),
        };
        cluster.run(&["start"]).await;
        cluster
    }

    /// `AMQP_URL` listing the three nodes.
    pub fn urls(&self) -> String {
        (1..=3)
            .map(|n| format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port(n)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The AMQP port of node `n` (1–3).
    pub fn port(&self, n: u16) -> u16 {
        self.base_port + n - 1
    }

    /// The node (1–3) that leads quorum queue `queue`, asked of node `via`.
    pub async fn leader(&self, queue: &str, via: u16) -> u16 {
        let output = self
            .run(&[
                "ctl",
                &via.to_string(),
                "list_queues",
                "-q",
                "--no-table-headers",
                "name",
                "leader",
            ])
            .await;
        let listing = String::from_utf8_lossy(&output.stdout).into_owned();
        let leader = listing
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .find(|(name, _)| *name == queue)
            .map(|(_, leader)| leader.trim().to_owned())
            .unwrap_or_else(|| panic!("no leader for {queue} in:\n{listing}"));
        (1..=3)
            .find(|n| leader == format!("resetmail-{}@localhost", self.port(*n)))
            .unwrap_or_else(|| panic!("{queue} is led by {leader}, not a node of this cluster"))
    }

    /// Kills node `n` with SIGKILL, as a crash would; returns once it is gone.
    pub async fn kill(&self, n: u16) {
        self.run(&["kill", &n.to_string()]).await;
    }

    /// Starts node `n` again; it rejoins the cluster by itself.
    pub async fn start_node(&self, n: u16) {
        self.run(&["start-node", &n.to_string()]).await;
    }

    async fn run(&self, args: &[&str]) -> Output {
        let output = tokio::process::Command::new("bash")
            .arg(script())
            .args(args)
            .env("RESETMAIL_CLUSTER_DIR", &self.dir)
            .env("RESETMAIL_CLUSTER_PORT", self.base_port.to_string())
            .output()
            .await
            .unwrap_or_else(|error| panic!("cannot run scripts/cluster.sh: {error}"));
        assert!(
            output.status.success(),
            "scripts/cluster.sh {} failed: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // A failed test keeps the nodes' logs: what the broker did is half of what went wrong.
        if std::thread::panicking() {
            let kept = std::env::temp_dir().join(format!(
                "resetmail-cluster-logs-{}",
                Uuid::new_v4().simple()
            ));
            let _ = std::fs::create_dir_all(&kept);
            for n in 1..=3 {
                let from = self.dir.join(format!("node{n}/log"));
                let to = kept.join(format!("node{n}"));
                let _ = std::process::Command::new("cp")
                    .args(["-r", &from.to_string_lossy(), &to.to_string_lossy()])
                    .status();
            }
            eprintln!("the cluster's logs are kept in {}", kept.display());
        }
        let _ = std::process::Command::new("bash")
            .arg(script())
            .arg("stop")
            .env("RESETMAIL_CLUSTER_DIR", &self.dir)
            .env("RESETMAIL_CLUSTER_PORT", self.base_port.to_string())
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port `p` such that `p`, `p + 1`, `p + 2` (AMQP) and the same plus 20,000 (Erlang
/// distribution) are free now, below the kernel's ephemeral range.
fn free_base_port() -> u16 {
    for _ in 0..200 {
        let random =
            u16::from_le_bytes(*Uuid::new_v4().as_bytes().first_chunk().unwrap_or(&[0, 0]));
        let base = 6000 + random % 3000;
        let ports = (0..3).flat_map(|n| [base + n, base + n + 20_000]);
        let free = ports
            .map(|port| TcpListener::bind(("127.0.0.1", port)))
            .collect::<Result<Vec<_>, _>>()
            .is_ok();
        if free {
            return base;
        }
    }
    panic!("no three free ports found for a test cluster");
}
