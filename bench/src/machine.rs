//! What a figure was measured on: machine, CPUs, build profile, git revision;
//! and process CPU time from `/proc`, for CPU-per-request figures.

use serde::Serialize;
use std::process::Command;
use std::time::Duration;

/// Printed beside every figure.
#[derive(Debug, Clone, Serialize)]
pub struct MachineInfo {
    pub nproc: usize,
    /// CPUs this process may run on (taskset/cgroup affinity).
    pub cpus_allowed: Vec<usize>,
    pub cpu_model: String,
    pub profile: &'static str,
    pub git_rev: String,
}

impl MachineInfo {
    pub fn collect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let nproc = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count()
            .max(1);
        MachineInfo {
            nproc,
            cpus_allowed: allowed_cpus(),
            cpu_model: cpu_model(&cpuinfo),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            git_rev: git_rev(),
        }
    }

    pub fn one_line(&self) -> String {
        format!(
            "machine: nproc={} allowed_cpus={} cpu=\"{}\" profile={} git={}",
            self.nproc,
            format_cpu_list(&self.cpus_allowed),
            self.cpu_model,
            self.profile,
            self.git_rev
        )
    }
}

fn cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// `git rev-parse --short HEAD` of the tree the binary was built from (or of
/// the working directory), with `+dirty` when it has local changes.
fn git_rev() -> String {
    let manifest_dir = env!("CARGO_MANIFEST_DIR");
    for dir in [manifest_dir, "."] {
        let rev = Command::new("git")
            .args(["-C", dir, "rev-parse", "--short", "HEAD"])
            .output();
        if let Ok(out) = rev {
            if out.status.success() {
                let rev = String::from_utf8_lossy(&out.stdout).trim().to_string();
                let dirty = Command::new("git")
                    .args(["-C", dir, "status", "--porcelain", "--untracked-files=no"])
                    .output()
                    .map(|o| o.status.success() && !o.stdout.is_empty())
                    .unwrap_or(false);
                return if dirty { format!("{rev}+dirty") } else { rev };
            }
        }
    }
    "unknown".to_string()
}

/// CPUs in this process's affinity mask, from `/proc/self/status`.
pub fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(str::trim)
        .unwrap_or("");
    let cpus = parse_cpu_list(list);
    if cpus.is_empty() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        (0..n).collect()
    } else {
        cpus
    }
}

/// Parses `0-3,6,8-9`.
pub fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    cpus.extend(a..=b);
                }
            }
            None => {
                if let Ok(c) = part.parse() {
                    cpus.push(c);
                }
            }
        }
    }
    cpus
}

pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if j > i {
            out.push_str(&format!("{}-{}", cpus[i], cpus[j]));
        } else {
            out.push_str(&cpus[i].to_string());
        }
        i = j + 1;
    }
    out
}

/// Busy and total clock ticks of `cpus` together since boot, from
/// `/proc/stat` (busy: all but idle and iowait, whatever process ran);
/// none when a CPU's line is missing or unreadable.
pub fn cpus_ticks(cpus: &[usize]) -> Option<CpuTicks> {
    parse_cpus_ticks(&std::fs::read_to_string("/proc/stat").ok()?, cpus)
}

/// Clock ticks of a set of CPUs, as [`cpus_ticks`] reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTicks {
    pub busy: u64,
    pub total: u64,
}

impl CpuTicks {
    /// The share of `later - self` that was busy, in 0..=1; none when no
    /// tick passed.
    pub fn busy_share_until(self, later: CpuTicks) -> Option<f64> {
        let total = later.total.checked_sub(self.total).filter(|&t| t > 0)?;
        let busy = later.busy.saturating_sub(self.busy).min(total);
        Some(busy as f64 / total as f64)
    }
}

fn parse_cpus_ticks(stat: &str, cpus: &[usize]) -> Option<CpuTicks> {
    let mut sum = CpuTicks { busy: 0, total: 0 };
    for &cpu in cpus {
        let name = format!("cpu{cpu}");
        let line = stat
            .lines()
            .find(|l| l.split_ascii_whitespace().next() == Some(name.as_str()))?;
        // user nice system idle iowait irq softirq steal (guest time is
        // already in user and nice, so it is not added again).
        let ticks: Vec<u64> = line
            .split_ascii_whitespace()
            .skip(1)
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [user, nice, system, idle, iowait, irq, softirq, steal] = ticks[..] else {
            return None;
        };
        let busy = user + nice + system + irq + softirq + steal;
        sum.busy += busy;
        sum.total += busy + idle + iowait;
    }
    Some(sum)
}

/// User + system CPU time of a process, all its threads included
/// (`/proc/PID/stat` fields 14 and 15).
pub fn process_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_stat_cpu_ticks(&stat)?;
    let hz = clock_ticks_per_second();
    Some(Duration::from_micros(ticks.saturating_mul(1_000_000) / hz))
}

/// CPU time of this process (the load generator itself).
pub fn own_cpu_time() -> Option<Duration> {
    process_cpu_time(std::process::id())
}

/// utime + stime in clock ticks. The command name (field 2) is in
/// parentheses and may contain spaces, so fields are counted after the last
/// `)`.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After ')' come field 3 (state) ...; utime is field 14, stime 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as u64
    } else {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields() {
        let stat = "1234 (my (weird) proc) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 75 3 4 20 0 9 0 12345 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn own_cpu_is_readable() {
        assert!(own_cpu_time().is_some());
        assert!(process_cpu_time(u32::MAX).is_none());
    }

    #[test]
    fn cpu_ticks_of_a_set() {
        let stat = "cpu  30 0 10 100 5 1 2 0 0 0\n\
                    cpu0 10 0 5 40 5 1 1 0 0 0\n\
                    cpu1 20 0 5 60 0 0 1 0 0 0\n\
                    intr 1 2 3\n";
        let one = parse_cpus_ticks(stat, &[1]).unwrap();
        assert_eq!(
            one,
            CpuTicks {
                busy: 26,
                total: 86
            }
        );
        let both = parse_cpus_ticks(stat, &[0, 1]).unwrap();
        assert_eq!(
            both,
            CpuTicks {
                busy: 43,
                total: 148
            }
        );
        assert_eq!(parse_cpus_ticks(stat, &[2]), None);
        assert_eq!(parse_cpus_ticks("cpu0 1 2\n", &[0]), None);
        let later = CpuTicks {
            busy: 43 + 75,
            total: 148 + 100,
        };
        assert_eq!(both.busy_share_until(later), Some(0.75));
        assert_eq!(both.busy_share_until(both), None);
        assert!(cpus_ticks(&allowed_cpus()).is_some());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,6, 8-9"), vec![0, 1, 2, 3, 6, 8, 9]);
        assert_eq!(parse_cpu_list(""), Vec::<usize>::new());
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(format_cpu_list(&[1]), "1");
        assert!(!allowed_cpus().is_empty());
    }

    #[test]
    fn machine_info() {
        let m = MachineInfo::collect();
        assert!(m.nproc >= 1);
        assert!(m.one_line().contains("profile="));
    }
}
