//! Which processes are the RabbitMQ node the bench talks to, so that another node on the same
//! machine (a test's cluster, say) does not count as the run's broker CPU.

use std::collections::HashSet;

use crate::procfs::{TcpRow, socket_inode};

/// The processes of the RabbitMQ node listening on one of `ports` (its AMQP port): the listener
/// and its descendants (`erl_child_setup`, `inet_gethost`); empty when none is found.
pub fn processes(ports: &[u16]) -> HashSet<u32> {
    let mut listening = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let (Some(row), Some(&"0A")) = (TcpRow::parse(line), fields.get(3))
                && ports.contains(&row.local_port)
            {
                listening.insert(row.inode);
            }
        }
    }
    let mut parents = Vec::new();
    let mut found = HashSet::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // The parent's pid is the second field after the name.
        let parent = stat.rsplit_once(')').and_then(|(_, rest)| {
            rest.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok())
        });
        parents.push((pid, parent.unwrap_or(0)));
        let holds = std::fs::read_dir(entry.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten();
        if holds
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter_map(|target| socket_inode(&target.to_string_lossy()))
            .any(|inode| listening.contains(&inode))
        {
            found.insert(pid);
        }
    }
    loop {
        let children: Vec<u32> = parents
            .iter()
            .filter(|(pid, parent)| found.contains(parent) && !found.contains(pid))
            .map(|(pid, _)| *pid)
            .collect();
        if children.is_empty() {
            break;
        }
        found.extend(children);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_is_found_by_its_listening_port() -> std::io::Result<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        assert!(processes(&[port]).contains(&std::process::id()));
        Ok(())
    }
}
