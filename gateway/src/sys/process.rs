//! The process and its threads: privileges (euid, capabilities), rlimits,
//! CPU affinity.

use std::io;

/// Pins the calling thread to one CPU.
pub fn pin_thread_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays in bounds for cpu < CPU_SETSIZE
    // (checked); sched_setaffinity(0, ...) affects only this thread.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cpu out of range",
            ));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// RLIMIT_MEMLOCK (soft, hard) in bytes; `u64::MAX` is unlimited. Kernels
/// before 5.11 charge BPF maps against it.
pub fn memlock_limit() -> io::Result<(u64, u64)> {
    // SAFETY: rlimit is plain data; getrlimit fills it.
    let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: a valid resource and a valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // rlim_t is u64 on every 64-bit Linux target (glibc and musl).
    let conv = |v: libc::rlim_t| -> u64 {
        if v == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            v
        }
    };
    Ok((conv(r.rlim_cur), conv(r.rlim_max)))
}

// --- capabilities (include/uapi/linux/capability.h) --------------------------

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The effective capability set (`CapEff` of /proc/self/status).
pub fn effective_caps() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

pub fn has(caps: u64, cap: u32) -> bool {
    caps & (1 << cap) != 0
}
