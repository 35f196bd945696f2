//! The glibc tunables `shardgate serve` runs with, set by re-executing
//! itself once at start.
//!
//! glibc before 2.40 copies blocks of 2 KiB and more with `rep movsb`
//! (`glibc.cpu.x86_rep_movsb_threshold`). On AMD Zen, such a copy whose
//! destination lies 1 to 31 bytes past its source, modulo 4 KiB, runs
//! about 17 times slower than the vector loop: 1.8 us against 0.11 us for
//! 5 KiB on this project's EPYC machines (glibc bug 30994; 2.40 stops using
//! `rep movsb` on AMD). Every request moves its future (about 5 KiB) into
//! its box, and bodies are copied; with the layout the binary gets, those
//! copies can hit the slow case, depending on where the stack and the heap
//! lie. Raising the threshold out of reach, as glibc 2.40 does on AMD, cut
//! the shard's time in `memcpy` from 4.9% to 2.7% of its CPU on one build
//! and from 3.6% to 2.5% on another (`perf record` at saturation).
//!
//! The dynamic loader reads `GLIBC_TUNABLES` once, before `main`: so the
//! process sets it and re-executes its own binary (`execve`: same pid,
//! arguments, environment and open files) before doing anything
//! else; the new image has `SHARDGATE_NO_REEXEC=1`, so it does not try
//! again. An operator's own setting of the threshold is kept, and
//! `SHARDGATE_NO_REEXEC=1` turns this off (for a debugger or `valgrind`
//! that does not follow `execve`). If the re-execution fails, the gateway
//! runs on as it is.

/// What glibc 2.40 sets on AMD, in effect: no copy takes `rep movsb`.
pub const REP_MOVSB_THRESHOLD: &str = "glibc.cpu.x86_rep_movsb_threshold=1099511627776";

/// The environment a process with `tunables` (the current
/// `GLIBC_TUNABLES`) on a CPU from `vendor` should be re-executed with,
/// or `None` to run on as it is.
pub fn wanted(vendor: &[u8; 12], tunables: Option<&str>) -> Option<String> {
    // Hygon's CPUs are Zen cores.
    if vendor != b"AuthenticAMD" && vendor != b"HygonGenuine" {
        return None;
    }
    match tunables {
        Some(t) if t.contains("x86_rep_movsb_threshold") => None,
        Some(t) if !t.is_empty() => Some(format!("{t}:{REP_MOVSB_THRESHOLD}")),
        _ => Some(REP_MOVSB_THRESHOLD.to_string()),
    }
}

/// Re-executes the process with the tunables it wants; returns only when
/// none are wanted or the re-execution failed.
pub fn reexec_if_wanted() {
    #[cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os("SHARDGATE_NO_REEXEC").is_some_and(|v| v == "1") {
            return;
        }
        let current = std::env::var_os("GLIBC_TUNABLES");
        // Tunables that are not UTF-8 are left as they are.
        let current = match current.as_deref().map(std::ffi::OsStr::to_str) {
            Some(None) => return,
            Some(Some(t)) => Some(t),
            None => None,
        };
        let Some(value) = wanted(&cpu_vendor(), current) else {
            return;
        };
        let args: Vec<_> = std::env::args_os().collect();
        let Some((arg0, rest)) = args.split_first() else {
            return;
        };
        // By its path, not `/proc/self/exe`: the kernel names the process
        // after the file executed, and `ps` should say `shardgate`. A path
        // gone stale (the binary replaced) falls back to `/proc/self/exe`.
        let mut tried = Vec::new();
        if let Ok(exe) = std::env::current_exe() {
            tried.push(exe);
        }
        tried.push("/proc/self/exe".into());
        let mut last = None;
        for exe in tried {
            // The marker keeps the new image from trying again, whatever
            // glibc made of the tunables (a secure-mode process drops them
            // all).
            let err = std::process::Command::new(exe)
                .arg0(arg0)
                .args(rest)
                .env("GLIBC_TUNABLES", &value)
                .env("SHARDGATE_NO_REEXEC", "1")
                .exec();
            last = Some(err);
        }
        // A failed exec has put SIGPIPE back to its default (std does so
        // for the new image): a write to a closed socket would kill the
        // gateway. Ignored again, as std had it.
        // SAFETY: signal(2) with a constant disposition, before any thread
        // but this one exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        if let Some(err) = last {
            log::warn!(
                "could not re-execute with {REP_MOVSB_THRESHOLD}: {err}; running on without it"
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn cpu_vendor() -> [u8; 12] {
    // `cpuid` leaf 0 is on every x86_64 CPU: the vendor in ebx, edx, ecx.
    #[allow(unused_unsafe)]
    // SAFETY: leaf 0 of cpuid exists on every x86_64 CPU.
    let r = unsafe { std::arch::x86_64::__cpuid(0) };
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&r.ebx.to_le_bytes());
    v[4..8].copy_from_slice(&r.edx.to_le_bytes());
    v[8..].copy_from_slice(&r.ecx.to_le_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_amd_gets_the_threshold_and_an_operators_own_is_kept() {
        assert_eq!(wanted(b"GenuineIntel", None), None);
        assert_eq!(
            wanted(b"AuthenticAMD", None).as_deref(),
            Some(REP_MOVSB_THRESHOLD)
        );
        assert_eq!(
            wanted(b"HygonGenuine", Some("")).as_deref(),
            Some(REP_MOVSB_THRESHOLD)
        );
        assert_eq!(
            wanted(b"AuthenticAMD", Some("glibc.malloc.arena_max=2")),
            Some(format!("glibc.malloc.arena_max=2:{REP_MOVSB_THRESHOLD}"))
        );
        assert_eq!(
            wanted(
                b"AuthenticAMD",
                Some("glibc.cpu.x86_rep_movsb_threshold=4096")
            ),
            None
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vendor_is_read_from_cpuid() {
        let v = cpu_vendor();
        assert!(v.iter().all(|b| b.is_ascii_graphic()), "{v:?}");
    }
}
