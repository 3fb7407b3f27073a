//! Counters a user would look at: TCP segments, TCP memory, process memory.

use std::fs;

/// TCP segments sent in the network namespace of process `pid`: a test on
/// a node of its own counts only its own traffic.
pub fn tcp_out_segments_in(pid: u32) -> u64 {
    snmp_field(&format!("/proc/{pid}/net/snmp"), "Tcp:", "OutSegs")
}

fn snmp_field(path: &str, prefix: &str, field: &str) -> u64 {
    let text = fs::read_to_string(path).unwrap_or_else(|err| panic!("{path}: {err}"));
    let mut lines = text.lines().filter(|line| line.starts_with(prefix));
    let names: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    let values: Vec<&str> = lines.next().expect("values").split_whitespace().collect();
    let i = names.iter().position(|n| *n == field).expect("field");
    values[i].parse().expect("number")
}

/// TCP memory in bytes (`TCP: ... mem PAGES` in /proc/net/sockstat): every
/// TCP socket's queued data, spliced data included.
pub fn tcp_memory_bytes() -> u64 {
    let text = fs::read_to_string("/proc/net/sockstat").expect("/proc/net/sockstat");
    let line = text
        .lines()
        .find(|line| line.starts_with("TCP:"))
        .expect("TCP line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let i = fields.iter().position(|f| *f == "mem").expect("mem field");
    fields[i + 1].parse::<u64>().expect("pages") * page_size()
}

/// Resident set size of `pid` in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:") * 1024
}

/// Peak resident set size of `pid` in bytes (`VmHWM`).
pub fn peak_rss_bytes(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:") * 1024
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|line| line.starts_with(key))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u64 }
}

/// Shared memory in use on the machine (`Shmem` in /proc/meminfo, bytes):
/// memory files such as the rings of the `shm` transport count here.
pub fn shmem_bytes() -> u64 {
    let text = fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    text.lines()
        .find(|line| line.starts_with("Shmem:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .expect("Shmem in /proc/meminfo")
        * 1024
}
