//! Resident memory of a server: a process and all its descendants (Pushpin runs several
//! processes, websocketd one per connection), read from /proc.

use std::collections::HashMap;
use std::fs;

/// VmRSS in KiB of `pid` and every process below it; 0 for processes that are gone.
pub fn tree_kib(pid: u32) -> u64 {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(parent) = parent_of(child) {
                children.entry(parent).or_default().push(child);
            }
        }
    }
    let mut total = 0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        total += rss_kib(p);
        if let Some(kids) = children.get(&p) {
            stack.extend(kids);
        }
    }
    total
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_resident_memory() {
        let own = super::tree_kib(std::process::id());
        assert!(own > 100, "{own} KiB");
        assert_eq!(
            super::parent_of(std::process::id()),
            Some(std::os::unix::process::parent_id())
        );
    }
}
