//! What a long-running process (an agent, an object store) used during one
//! run, from /proc: CPU time, bytes it caused to be written to storage, and
//! its peak memory (reset before each run through `clear_refs`).

use std::{fs, path::Path};

/// A reading of one process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reading {
    pub cpu_seconds: f64,
    pub write_bytes: u64,
}

/// Reads `pid`'s counters; zeros if it is gone.
pub fn read(pid: u32) -> Reading {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let write_bytes = io
        .lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the
    // 14th field of the line, stime the 15th.
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Reading {
        cpu_seconds: ticks as f64 / hz,
        write_bytes,
    }
}

/// CPU time of `pid`'s live threads in ns, from the scheduler's accounting
/// (finer than [`read`]'s clock ticks); [`read`]'s figure where the kernel
/// keeps none.
pub fn cpu_ns(pid: u32) -> u64 {
    let threads: Vec<u64> = fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|task| fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect();
    if threads.is_empty() {
        return (read(pid).cpu_seconds * 1e9) as u64;
    }
    threads.iter().sum()
}

/// What changed between two readings.
pub fn since(before: Reading, after: Reading) -> Reading {
    Reading {
        cpu_seconds: (after.cpu_seconds - before.cpu_seconds).max(0.0),
        write_bytes: after.write_bytes.saturating_sub(before.write_bytes),
    }
}

/// Resets the peak resident memory of `pid` to its current size.
pub fn reset_peak(pid: u32) {
    let _ = fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Peak resident memory of `pid` since the last reset, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// Bytes of the files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_bytes(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let mut spin = 0u64;
        for i in 0..5_000_000u64 {
            spin = spin.wrapping_add(i * i);
        }
        assert!(spin > 0);
        assert!(read(me).cpu_seconds >= 0.0);
        assert!(cpu_ns(me) > 0);
        assert!(peak_rss(me) > 0);
    }
}
