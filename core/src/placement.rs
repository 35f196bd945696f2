//! Which CPUs the shards run on, and how the gateway's other threads share
//! them.
//!
//! An operator confines the gateway with `taskset`, a cgroup cpuset
//! (containers, Kubernetes' static CPU manager, systemd `AllowedCPUs`) or a
//! CPU quota (`cpu.max`). Shards must stay inside what they were given:
//! pinning shard *i* to CPU *i* of the machine escapes a `taskset -c 1` onto
//! CPU 0, next to whatever the operator kept there. So the machine's facts
//! are read once at config load ([`Machine::current`]) and the shard count
//! and pinning are derived from them ([`resolve`], pure and unit tested).
//!
//! Invariant: every CPU a shard is pinned to is in the process's allowed set
//! at start.

use std::fmt;

/// The CPUs this process may run on, and how many its cgroup's CPU quota
/// pays for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Sorted, without duplicates, never empty.
    pub allowed: Vec<usize>,
    /// `ceil(quota / period)` of the tightest `cpu.max` (or cgroup v1 CFS
    /// quota) above this process; `None` when unlimited or unknown.
    pub quota_cpus: Option<usize>,
}

impl Machine {
    /// Reads the allowed set (`sched_getaffinity`) and the cgroup CPU quota.
    pub fn current() -> Machine {
        let allowed = affinity().unwrap_or_else(|| {
            (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
        });
        Machine {
            allowed,
            quota_cpus: cgroup_quota_cpus(),
        }
    }
}

/// Shards and their CPUs, as derived from config and the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub shards: usize,
    /// The CPUs shards are pinned to: shard *i* gets `cpus[i % cpus.len()]`.
    /// Never empty.
    pub cpus: Vec<usize>,
}

impl Placement {
    pub fn cpu_of(&self, shard: usize) -> usize {
        self.cpus[shard % self.cpus.len()]
    }
}

/// What the config says about shard count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardCount {
    /// One shard per CPU the process may use: the `cpus:` list, else the
    /// allowed set, either capped by the cgroup quota.
    Auto,
    Fixed(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("`{0}` is not a CPU list (like `2-5,8`)")]
    Syntax(String),
    #[error("CPU {cpu} is not in this process's allowed set ({allowed})")]
    NotAllowed { cpu: usize, allowed: CpuList },
}

/// Derives the shard count and pinning. `cpus` is the config's explicit CPU
/// list, already parsed.
pub fn resolve(
    count: ShardCount,
    cpus: Option<&[usize]>,
    machine: &Machine,
) -> Result<Placement, PlacementError> {
    let set = match cpus {
        Some(list) => {
            if let Some(&cpu) = list.iter().find(|c| !machine.allowed.contains(c)) {
                return Err(PlacementError::NotAllowed {
                    cpu,
                    allowed: CpuList(machine.allowed.clone()),
                });
            }
            list.to_vec()
        }
        None => machine.allowed.clone(),
    };
    let shards = match count {
        ShardCount::Fixed(n) => n,
        ShardCount::Auto => machine
            .quota_cpus
            .map_or(set.len(), |q| q.clamp(1, set.len())),
    };
    Ok(Placement { shards, cpus: set })
}

/// A CPU list as the kernel and `taskset -c` write it: `0-3,8,10-11`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut i = 0;
        let v = &self.0;
        while i < v.len() {
            let mut j = i;
            while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
                j += 1;
            }
            if i > 0 {
                f.write_str(",")?;
            }
            if j > i {
                write!(f, "{}-{}", v[i], v[j])?;
            } else {
                write!(f, "{}", v[i])?;
            }
            i = j + 1;
        }
        Ok(())
    }
}

/// Parses `2-5,8` into sorted, distinct CPU numbers.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, PlacementError> {
    let bad = || PlacementError::Syntax(s.to_owned());
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: usize = lo.parse().map_err(|_| bad())?;
        let hi: usize = hi.parse().map_err(|_| bad())?;
        if lo > hi || hi >= MAX_CPUS {
            return Err(bad());
        }
        out.extend(lo..=hi);
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// Beyond any machine Linux runs on (`CONFIG_NR_CPUS` tops out at 8192).
const MAX_CPUS: usize = 8192;

/// CPUs a cgroup v2 `cpu.max` line (`"150000 100000"`, `"max 100000"`)
/// pays for, rounded up.
pub fn quota_from_cpu_max(line: &str) -> Option<usize> {
    let mut it = line.split_whitespace();
    let quota = it.next()?;
    let period: u64 = it.next().map_or(Some(100_000), |p| p.parse().ok())?;
    quota_cpus(quota.parse().ok()?, period)
}

fn quota_cpus(quota: u64, period: u64) -> Option<usize> {
    if period == 0 || quota == 0 {
        return None;
    }
    Some(quota.div_ceil(period) as usize)
}

/// Makes the calling thread give way to shards: it never preempts one when
/// it wakes (`SCHED_BATCH`), but runs when a shard sleeps or ends its time
/// slice, with a full share of the CPU under load.
///
/// For threads that only record (the usage and audit writers). They run on
/// the shards' CPUs, and at the normal policy each wake cuts into the
/// requests a shard has in flight: at 50k requests a second the usage
/// writer wakes about 130 times a second. An error (a seccomp filter
/// refusing the call) leaves the thread as it was.
pub fn yield_to_shards() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid local.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// [`yield_to_shards`] for a thread named `who`, logging a refusal.
pub fn background_thread(who: &str) {
    if let Err(e) = yield_to_shards() {
        log::debug!("{who}: runs at the shards' priority ({e})");
    }
}

fn affinity() -> Option<Vec<usize>> {
    // SAFETY: `cpu_set_t` is plain data, zeroed is the empty set; the
    // pointer and size passed describe that local exactly.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        set
    };
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `i` is below CPU_SETSIZE, the set's capacity.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect();
    (!cpus.is_empty()).then_some(cpus)
}

/// The tightest CPU quota among this process's cgroup and its ancestors
/// (a parent's quota limits its children too). cgroup v2 first, then v1.
fn cgroup_quota_cpus() -> Option<usize> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut best: Option<usize> = None;
    let mut take = |q: Option<usize>| {
        if let Some(q) = q {
            best = Some(best.map_or(q, |b| b.min(q)));
        }
    };
    for line in membership.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            for dir in ancestors("/sys/fs/cgroup", path) {
                take(
                    std::fs::read_to_string(format!("{dir}/cpu.max"))
                        .ok()
                        .and_then(|s| quota_from_cpu_max(&s)),
                );
            }
        } else if controllers.split(',').any(|c| c == "cpu") {
            for mount in ["/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"] {
                for dir in ancestors(mount, path) {
                    let read = |f: &str| {
                        std::fs::read_to_string(format!("{dir}/{f}"))
                            .ok()
                            .and_then(|s| s.trim().parse::<i64>().ok())
                    };
                    if let (Some(q), Some(p)) =
                        (read("cpu.cfs_quota_us"), read("cpu.cfs_period_us"))
                    {
                        if q > 0 && p > 0 {
                            take(quota_cpus(q as u64, p as u64));
                        }
                    }
                }
            }
        }
    }
    best
}

/// `root/a/b`, `root/a`, `root` for the cgroup path `/a/b`. Inside a
/// cgroup namespace the path is `/` and only `root` is read.
fn ancestors(root: &str, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut p = path.trim_end_matches('/');
    loop {
        out.push(format!("{root}{p}"));
        match p.rfind('/') {
            Some(i) => p = &p[..i],
            None => break,
        }
        if p.is_empty() {
            out.push(root.to_owned());
            break;
        }
    }
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn machine(allowed: &[usize], quota: Option<usize>) -> Machine {
        Machine {
            allowed: allowed.to_vec(),
            quota_cpus: quota,
        }
    }

    #[test]
    fn cpu_lists_parse_and_print_as_taskset_writes_them() {
        assert_eq!(parse_cpu_list("2-5,8").unwrap(), vec![2, 3, 4, 5, 8]);
        assert_eq!(parse_cpu_list(" 8 , 1-1,0").unwrap(), vec![0, 1, 8]);
        for bad in ["", "a", "3-1", "1,,2", "-1", "99999"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            CpuList(vec![0, 1, 2, 3, 8, 10, 11]).to_string(),
            "0-3,8,10-11"
        );
        assert_eq!(CpuList(vec![1]).to_string(), "1");
    }

    #[test]
    fn auto_is_the_allowed_set_not_the_machine() {
        // `taskset -c 1` on a 2-core host: one shard, on CPU 1.
        let p = resolve(ShardCount::Auto, None, &machine(&[1], None)).unwrap();
        assert_eq!(p.shards, 1);
        assert_eq!(p.cpu_of(0), 1);
        let p = resolve(ShardCount::Auto, None, &machine(&[2, 3, 6, 7], None)).unwrap();
        assert_eq!(p.shards, 4);
        assert_eq!(
            (0..4).map(|i| p.cpu_of(i)).collect::<Vec<_>>(),
            [2, 3, 6, 7]
        );
    }

    #[test]
    fn auto_follows_a_smaller_cpu_quota() {
        let p = resolve(ShardCount::Auto, None, &machine(&[0, 1, 2, 3], Some(2))).unwrap();
        assert_eq!(p.shards, 2);
        assert_eq!(p.cpu_of(1), 1);
        let p = resolve(ShardCount::Auto, None, &machine(&[0, 1], Some(16))).unwrap();
        assert_eq!(p.shards, 2);
    }

    #[test]
    fn an_explicit_list_must_be_inside_the_allowed_set() {
        let m = machine(&[0, 1, 2, 3], None);
        let p = resolve(ShardCount::Auto, Some(&[2, 3]), &m).unwrap();
        assert_eq!((p.shards, p.cpu_of(0), p.cpu_of(1)), (2, 2, 3));
        let err = resolve(ShardCount::Auto, Some(&[3, 5]), &m).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CPU 5 is not in this process's allowed set (0-3)"
        );
    }

    #[test]
    fn more_shards_than_cpus_wrap_around_the_set() {
        let p = resolve(ShardCount::Fixed(3), None, &machine(&[4, 5], None)).unwrap();
        assert_eq!((0..3).map(|i| p.cpu_of(i)).collect::<Vec<_>>(), [4, 5, 4]);
    }

    #[test]
    fn cpu_max_lines() {
        assert_eq!(quota_from_cpu_max("max 100000\n"), None);
        assert_eq!(quota_from_cpu_max("150000 100000\n"), Some(2));
        assert_eq!(quota_from_cpu_max("200000 100000"), Some(2));
        assert_eq!(quota_from_cpu_max("50000 100000"), Some(1));
        assert_eq!(quota_from_cpu_max("garbage"), None);
    }

    #[test]
    fn cgroup_ancestors_end_at_the_root() {
        assert_eq!(
            ancestors("/sys/fs/cgroup", "/a/b"),
            ["/sys/fs/cgroup/a/b", "/sys/fs/cgroup/a", "/sys/fs/cgroup"]
        );
        assert_eq!(ancestors("/sys/fs/cgroup", "/"), ["/sys/fs/cgroup"]);
    }

    #[test]
    fn this_process_has_an_allowed_set() {
        let m = Machine::current();
        assert!(!m.allowed.is_empty());
        assert!(m.allowed.windows(2).all(|w| w[0] < w[1]));
    }

    /// Per thread: the thread that yields changes, the one that spawned it
    /// does not.
    #[test]
    fn a_thread_that_yields_to_shards_is_batch_and_only_it() {
        // SAFETY: plain queries of the calling thread's policy.
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let before = policy();
        let inside = std::thread::spawn(move || {
            yield_to_shards().unwrap();
            policy()
        })
        .join()
        .unwrap();
        assert_eq!(inside, libc::SCHED_BATCH);
        assert_eq!(policy(), before);
    }
}
