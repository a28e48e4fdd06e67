//! What the bench reads from Linux's `/proc`: CPU time by process and for the whole machine, peak
//! resident memory, and the TCP connections a process holds.

use std::collections::{BTreeMap, HashSet};

use anyhow::Context as _;

/// CPU seconds (user + system) used so far, by command name.
pub type CpuByProgram = BTreeMap<String, f64>;

/// Clock ticks of the whole machine, busy and in all (`/proc/stat`).
pub struct MachineCpu {
    pub busy: f64,
    pub total: f64,
}

impl MachineCpu {
    pub fn now() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let ticks: Vec<f64> = stat
            .lines()
            .next()
            .context("empty /proc/stat")?
            .split_whitespace()
            .skip(1)
            .filter_map(|field| field.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
        let total: f64 = ticks.iter().take(8).sum();
        let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
        Ok(Self {
            busy: total - idle,
            total,
        })
    }

    /// The share of the machine's CPU time that was busy since `before` (0–1).
    pub fn busy_since(&self, before: &Self) -> f64 {
        (self.busy - before.busy) / (self.total - before.total).max(1.0)
    }
}

/// CPU seconds (user + system) a process has used so far.
pub fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    Ok(parse_stat(&stat).context("unreadable /proc/<pid>/stat")?.1)
}

/// The command name and CPU seconds of a `/proc/<pid>/stat` line.
fn parse_stat(stat: &str) -> Option<(String, f64)> {
    let (head, after_name) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    // Fields after the name start at the state (field 3); utime and stime are fields 14 and 15,
    // i.e. 11 and 12 after the state, in ticks of 1/100 s.
    let fields: Vec<f64> = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|field| field.parse().ok())
        .collect();
    Some((name, fields.iter().sum::<f64>() / 100.0))
}

/// CPU seconds used so far by every running process: its command name and seconds, by pid.
pub type CpuSnapshot = BTreeMap<u32, (String, f64)>;

/// Every running process's CPU seconds so far.
pub fn cpu_snapshot() -> CpuSnapshot {
    let mut processes = CpuSnapshot::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if let Some(process) = parse_stat(&stat) {
            processes.insert(pid, process);
        }
    }
    processes
}

/// CPU seconds used so far by every running process, summed by command name.
pub fn cpu_by_program() -> CpuByProgram {
    by_program(&cpu_snapshot())
}

/// A snapshot's CPU seconds summed by command name; kernel threads such as `kworker/1:5-events`
/// count under their base name.
pub fn by_program(snapshot: &CpuSnapshot) -> CpuByProgram {
    let mut programs = CpuByProgram::new();
    for (name, seconds) in snapshot.values() {
        let name = name.split('/').next().unwrap_or_default().to_owned();
        *programs.entry(name).or_insert(0.0) += seconds;
    }
    programs
}

/// Where the CPU went between two [`cpu_by_program`] readings: the busiest programs, in ms per
/// `unit` (an email, a request).
pub fn cpu_split(before: &CpuByProgram, after: &CpuByProgram, units: usize) -> Vec<(String, f64)> {
    let mut used: Vec<(String, f64)> = spent(before, after)
        .map(|(name, seconds)| (name.to_owned(), seconds * 1000.0 / units.max(1) as f64))
        .filter(|(_, ms)| *ms >= 0.01)
        .collect();
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    used.truncate(5);
    used
}

/// CPU seconds each program spent between two readings.
fn spent<'a>(
    before: &'a CpuByProgram,
    after: &'a CpuByProgram,
) -> impl Iterator<Item = (&'a str, f64)> {
    after.iter().map(|(name, seconds)| {
        let spent = seconds - before.get(name).copied().unwrap_or(0.0);
        (name.as_str(), spent.max(0.0))
    })
}

/// The programs a reset email costs CPU in, as grouped in the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// resetmail's own processes of this run, the api and the worker (not the bench).
    Resetmail,
    /// `postgres` processes: the server, its helpers and the backends of the run's database.
    Postgres,
    /// RabbitMQ's Erlang VM and its helper programs.
    Rabbitmq,
    /// The bench: load generator, SMTP sink, baseline clients.
    Bench,
}

/// Which processes are this run's, to tell its CPU from other work on the same machine (another
/// checkout's tests running their own api, say, on the same PostgreSQL server).
#[derive(Clone, Debug, Default)]
pub struct Owners {
    /// The api and worker processes the run started.
    pub resetmail: Vec<u32>,
    /// The bench's own process.
    pub bench: u32,
    /// `postgres` processes that work for something else: backends of other databases, and the
    /// bench's own monitoring connection.
    pub not_ours: HashSet<u32>,
    /// The RabbitMQ node the run uses (`broker_node::processes`); when empty, every RabbitMQ program
    /// counts (another node on the machine, a test's cluster, then counts too).
    pub broker: HashSet<u32>,
}

impl Owners {
    /// The part process `pid`, named `command`, belongs to, if any.
    pub fn part(&self, pid: u32, command: &str) -> Option<Part> {
        if self.not_ours.contains(&pid) {
            None
        } else if self.resetmail.contains(&pid) {
            Some(Part::Resetmail)
        } else if pid == self.bench {
            Some(Part::Bench)
        } else {
            match command {
                "postgres" => Some(Part::Postgres),
                "epmd" => Some(Part::Rabbitmq),
                "beam.smp" | "erl_child_setup" | "inet_gethost" | "erl"
                    if self.broker.is_empty() || self.broker.contains(&pid) =>
                {
                    Some(Part::Rabbitmq)
                }
                _ => None,
            }
        }
    }
}

/// CPU ms per unit spent by each [`Part`] between two readings.
#[derive(Clone, Copy, Debug, Default)]
pub struct PartsCpu {
    pub resetmail: f64,
    pub postgres: f64,
    pub rabbitmq: f64,
    pub bench: f64,
}

impl PartsCpu {
    /// What each part spent between `before` and `after`, per unit. A process that ended in
    /// between is not counted, nor is the time a new one spent before `before`.
    pub fn between(
        before: &CpuSnapshot,
        after: &CpuSnapshot,
        units: usize,
        owners: &Owners,
    ) -> Self {
        let mut parts = Self::default();
        for (pid, (command, seconds)) in after {
            let spent = seconds - before.get(pid).map_or(0.0, |(_, seconds)| *seconds);
            let ms = spent.max(0.0) * 1000.0 / units.max(1) as f64;
            match owners.part(*pid, command) {
                Some(Part::Resetmail) => parts.resetmail += ms,
                Some(Part::Postgres) => parts.postgres += ms,
                Some(Part::Rabbitmq) => parts.rabbitmq += ms,
                Some(Part::Bench) => parts.bench += ms,
                None => {}
            }
        }
        parts
    }

    /// What an email costs the service: resetmail, PostgreSQL and RabbitMQ (not the bench).
    pub fn service(&self) -> f64 {
        self.resetmail + self.postgres + self.rabbitmq
    }
}

/// Peak resident memory of a process so far (`VmHWM`), in MB (10^6 bytes, as the targets are).
pub fn peak_rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/<pid>/status")?;
    Ok(kib * 1024.0 / 1e6)
}

/// The local ports of the established TCP connections that process `pid` holds to `remote_port`:
/// the sockets among its open files, looked up in its network namespace's TCP tables.
pub fn local_ports_to(pid: u32, remote_port: u16) -> HashSet<u16> {
    let inodes: HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| socket_inode(&target.to_string_lossy()))
        .collect();
    let mut ports = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for row in text.lines().skip(1).filter_map(TcpRow::parse) {
            if row.established && row.remote_port == remote_port && inodes.contains(&row.inode) {
                ports.insert(row.local_port);
            }
        }
    }
    ports
}

/// The inode of an open file's link target `socket:[12345]`.
pub fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// One row of `/proc/<pid>/net/tcp` or `tcp6`.
#[derive(Debug, PartialEq, Eq)]
pub struct TcpRow {
    pub local_port: u16,
    pub remote_port: u16,
    pub established: bool,
    pub inode: u64,
}

impl TcpRow {
    /// `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode …`,
    /// addresses as `HEXADDR:HEXPORT`, the state in hex (`01` is established).
    pub fn parse(row: &str) -> Option<Self> {
        let fields: Vec<&str> = row.split_whitespace().collect();
        let port = |address: &str| u16::from_str_radix(address.rsplit_once(':')?.1, 16).ok();
        Some(Self {
            local_port: port(fields.get(1)?)?,
            remote_port: port(fields.get(2)?)?,
            established: *fields.get(3)? == "01",
            inode: fields.get(9)?.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_the_name_and_the_cpu_seconds() {
        let stat = "4242 (resetmail-worke) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 50 0 0 20 0 9";
        assert_eq!(parse_stat(stat), Some(("resetmail-worke".to_owned(), 2.0)));
    }

    #[test]
    fn a_name_with_spaces_and_parentheses_is_read_whole() {
        let stat = "7 (postgres: a (b)) S 1 7 7 0 -1 0 0 0 0 0 1 2 0 0 20 0 1";
        assert_eq!(parse_stat(stat), Some(("postgres: a (b)".to_owned(), 0.03)));
    }

    #[test]
    fn a_tcp_row_gives_ports_state_and_inode() {
        let row = "   3: 0100007F:D431 0100007F:1538 01 00000000:00000000 00:00000000 00000000   \
                   108        0 51234 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(
            TcpRow::parse(row),
            Some(TcpRow {
                local_port: 0xD431,
                remote_port: 5432,
                established: true,
                inode: 51234,
            })
        );
    }

    #[test]
    fn a_process_s_connections_to_a_port_are_found_by_their_local_ports() -> std::io::Result<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let server_port = listener.local_addr()?.port();
        let client = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (_accepted, _) = listener.accept()?;
        let ports = local_ports_to(std::process::id(), server_port);
        assert_eq!(ports, HashSet::from([client.local_addr()?.port()]));
        Ok(())
    }

    #[test]
    fn only_socket_links_have_an_inode() {
        assert_eq!(socket_inode("socket:[51234]"), Some(51234));
        assert_eq!(socket_inode("/dev/null"), None);
        assert_eq!(socket_inode("anon_inode:[eventpoll]"), None);
    }

    #[test]
    fn processes_fall_into_their_parts() {
        let owners = Owners {
            resetmail: vec![10, 11],
            bench: 12,
            not_ours: HashSet::from([20]),
            broker: HashSet::new(),
        };
        assert_eq!(owners.part(10, "resetmail-worke"), Some(Part::Resetmail));
        assert_eq!(owners.part(12, "resetmail-bench"), Some(Part::Bench));
        assert_eq!(owners.part(13, "resetmail-api"), None);
        assert_eq!(owners.part(21, "postgres"), Some(Part::Postgres));
        assert_eq!(owners.part(20, "postgres"), None);
        assert_eq!(owners.part(22, "beam.smp"), Some(Part::Rabbitmq));
        assert_eq!(owners.part(23, "kworker/0:1"), None);
        let one_node = Owners {
            broker: HashSet::from([22]),
            ..owners
        };
        assert_eq!(one_node.part(22, "beam.smp"), Some(Part::Rabbitmq));
        assert_eq!(one_node.part(24, "beam.smp"), None);
        assert_eq!(one_node.part(25, "epmd"), Some(Part::Rabbitmq));
    }

    #[test]
    fn the_service_share_leaves_out_the_bench_and_other_work() {
        let process = |name: &str, seconds| (name.to_owned(), seconds);
        let before = CpuSnapshot::from([
            (1, process("postgres", 1.0)),
            (2, process("resetmail-bench", 1.0)),
            (3, process("postgres", 1.0)),
        ]);
        let after = CpuSnapshot::from([
            (1, process("postgres", 2.0)),
            (2, process("resetmail-bench", 3.0)),
            (3, process("postgres", 9.0)),
            (4, process("resetmail-worke", 0.5)),
            (5, process("beam.smp", 0.5)),
        ]);
        let owners = Owners {
            resetmail: vec![4],
            bench: 2,
            not_ours: HashSet::from([3]),
            broker: HashSet::new(),
        };
        let parts = PartsCpu::between(&before, &after, 1000, &owners);
        assert!((parts.service() - 2.0).abs() < 1e-9, "{parts:?}");
        assert!((parts.bench - 2.0).abs() < 1e-9, "{parts:?}");
    }
}
