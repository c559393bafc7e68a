//! Measuring: medians, processes' CPU and memory, progress lines.

use std::process::{Command, Stdio};

/// Median, min and max of a sample.
#[derive(Clone, Copy)]
pub(crate) struct Stat {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

pub(crate) fn stat(values: &[f64]) -> Stat {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    Stat {
        median: if v.is_empty() { 0.0 } else { v[v.len() / 2] },
        min: v.first().copied().unwrap_or(0.0),
        max: v.last().copied().unwrap_or(0.0),
    }
}

pub(crate) fn fmt(s: Stat, decimals: usize) -> String {
    format!(
        "{:.*} ({:.*}–{:.*})",
        decimals, s.median, decimals, s.min, decimals, s.max
    )
}

pub(crate) fn percentile(sorted_micros: &[u32], p: f64) -> f64 {
    if sorted_micros.is_empty() {
        return 0.0;
    }
    let i = ((sorted_micros.len() as f64 - 1.0) * p).round() as usize;
    sorted_micros[i] as f64 / 1000.0
}

/// CPU seconds (user + system) a process has used.
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / clock_ticks()
}

pub(crate) fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Pins every thread of `pid` to `cpus` (e.g. "0").
pub(crate) fn pin(pid: u32, cpus: &str) {
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

pub(crate) fn progress(text: &str) {
    eprintln!("bench: {text}");
}
