//! Statistics, the machine description, and sections of docs/BENCHMARKS.md.

use std::{fs, process::Command};

use anyhow::Context as _;

/// Median, minimum and maximum of some runs.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Self {
            median,
            min: sorted[0],
            max: sorted[n - 1],
        }
    }

    /// `median (min–max)` with `digits` decimals, for the tables.
    pub fn cell(&self, digits: usize) -> String {
        format!(
            "{:.*} ({:.*}–{:.*})",
            digits, self.median, digits, self.min, digits, self.max
        )
    }
}

/// One line about the machine: CPU, cores, memory, kernel.
pub fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|name| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .next()
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{cpu}, {cores} vCPUs, {memory_gib:.0} GiB, Linux {kernel}")
}

/// The workspace root (for docs/).
fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_owned()
}

/// Today's date (UTC), from `date`.
pub fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Replaces the section named `name` of docs/BENCHMARKS.md (between its
/// markers), appending it if absent, and writes `json` beside it.
pub fn write_section(name: &str, markdown: &str, json: &serde_json::Value) -> anyhow::Result<()> {
    let docs = workspace_root().join("docs");
    fs::create_dir_all(docs.join("benchmarks")).context("creating docs/benchmarks")?;
    let path = docs.join("BENCHMARKS.md");
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let block = format!("{begin}\n{}\n{end}", markdown.trim_end());
    let current = fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmarks\n\nWritten by `cargo xtask bench ...`; each section says how to reproduce it.\n".to_owned()
    });
    let updated = match (current.find(&begin), current.find(&end)) {
        (Some(start), Some(stop)) => format!(
            "{}{block}{}",
            &current[..start],
            &current[stop + end.len()..]
        ),
        _ => format!("{}\n{block}\n", current.trim_end()),
    };
    fs::write(&path, updated).with_context(|| format!("writing {}", path.display()))?;
    let json_path = docs.join("benchmarks").join(format!("{name}.json"));
    fs::write(&json_path, serde_json::to_string_pretty(json)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    eprintln!(
        "xtask: wrote {} and {}",
        path.display(),
        json_path.display()
    );
    Ok(())
}
