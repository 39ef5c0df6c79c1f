//! Clocks: CLOCK_MONOTONIC (the clock of `bpf_ktime_get_ns`, so kernel
//! last-packet times compare with it) and the wall clock in milliseconds.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
pub fn clock_monotonic(ts: &mut libc::timespec) {
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, ts) };
}

/// CLOCK_MONOTONIC now, in nanoseconds (comparable with the kernel's
/// last-packet times).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    clock_monotonic(&mut ts);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Milliseconds since the Unix epoch.
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The `Instant` matching a wall-clock time in the past, as seen now.
pub fn instant_of(wall: i64, now: Instant, now_wall: i64) -> Instant {
    let ago = Duration::from_millis(now_wall.saturating_sub(wall).max(0) as u64);
    now.checked_sub(ago).unwrap_or(now)
}
