//! Every raw system call of the gateway lives here, behind safe wrappers:
//! the `bpf(2)` commands aya 0.16 has no API for (BPF_MAP_LOOKUP_BATCH,
//! and a plain BPF_MAP_LOOKUP_ELEM for the per-key baseline), mmap of
//! BPF_F_MMAPABLE arrays, bpffs mounting, network-namespace switching and a
//! few libc look-ups.
//!
//! Rules this code depends on (see the kernel's `kernel/bpf/syscall.c`,
//! `hashtab.c`, `arraymap.c`; cilium/ebpf's map.go and memory.go write down
//! the same rules):
//! - a per-CPU map's value, as user space reads it, is one slot per
//!   *possible* CPU, each `round_up(value_size, 8)` bytes;
//! - BPF_MAP_LOOKUP_BATCH takes an opaque cursor (`in_batch`, absent on the
//!   first call) and returns the next one in `out_batch`; hash maps use a
//!   bucket index and arrays an index, so a buffer of max(key_size, 8) bytes
//!   holds either;
//! - the call that reaches the end fails with ENOENT and may still return a
//!   final partial batch in `count`;
//! - ENOSPC means one hash bucket holds more entries than the batch has room
//!   for (only when nothing was copied): retry with a larger batch;
//! - EINTR: retry the same call;
//! - only BPF_MAP_TYPE_ARRAY (not per-CPU arrays) can be mmapped, and its
//!   elements are `round_up(value_size, 8)` apart from a page-aligned start;
//!   the kernel writes them concurrently, so they are read as atomics.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, BorrowedFd},
    path::Path,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_CREATE: libc::c_long = 0;
pub const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// statfs f_type of a bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// `union bpf_attr` for BPF_MAP_*_ELEM.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for BPF_MAP_*_BATCH.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<()> {
    // SAFETY: `attr` is a live, properly sized #[repr(C)] prefix of
    // `union bpf_attr` for `cmd`; the kernel zero-extends shorter attrs.
    // Every pointer inside it was set by the caller to a buffer that stays
    // alive and large enough for the call (checked by the callers below).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `round_up(value_size, 8)`: the per-CPU stride of per-CPU map values and
/// the element stride of arrays.
pub const fn value_stride(value_size: usize) -> usize {
    (value_size + 7) & !7
}

/// One BPF_MAP_LOOKUP_ELEM: `value` must be exactly the value size the
/// kernel copies (for per-CPU maps: ncpus * stride). Returns false if the
/// key does not exist.
pub fn lookup_elem(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value.as_mut_ptr() as u64,
        ..Default::default()
    };
    match sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `union bpf_attr` for BPF_MAP_CREATE (the fields we use).
#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// Creates a standalone map (used by the read-out benchmark for the
/// per-CPU hash baseline, which aya cannot create on its own).
pub fn create_map(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) -> io::Result<std::os::fd::OwnedFd> {
    create_map_flags(map_type, key_size, value_size, max_entries, 0)
}

/// [`create_map`] with `map_flags` (`gateway check` probes BPF_F_MMAPABLE).
pub fn create_map_flags(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
) -> io::Result<std::os::fd::OwnedFd> {
    let mut attr = CreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags,
    };
    // SAFETY: as in sys_bpf; BPF_MAP_CREATE returns a new fd we take ownership of.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &mut attr as *mut CreateAttr,
            size_of::<CreateAttr>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: r is a fresh file descriptor owned by nobody else.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r as i32) })
}

/// One BPF_MAP_UPDATE_ELEM (`flags`: BPF_ANY 0, BPF_NOEXIST 1, BPF_EXIST 2).
pub fn update_elem(fd: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        flags,
        ..Default::default()
    };
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
}

/// One BPF_MAP_DELETE_ELEM. Returns false if the key did not exist.
pub fn delete_elem(fd: BorrowedFd<'_>, key: &[u8]) -> io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        ..Default::default()
    };
    match sys_bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The bytes of a plain-old-data value.
pub fn pod_bytes<T: aya::Pod>(v: &T) -> &[u8] {
    // SAFETY: T is Pod: no padding, every byte initialised; the slice
    // borrows `v` for its lifetime.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

/// Reads a whole map with BPF_MAP_LOOKUP_BATCH, reusing its buffers across
/// reads.
#[derive(Debug)]
pub struct BatchReader {
    key_size: usize,
    /// Bytes of one entry's value as the kernel copies it out.
    entry_size: usize,
    batch: usize,
    keys: Vec<u8>,
    values: Vec<u8>,
    cursor_in: Vec<u8>,
    cursor_out: Vec<u8>,
    /// System calls made by the last `read_all` (for benchmarks and tests).
    pub last_calls: usize,
}

impl BatchReader {
    /// `ncpus`: number of possible CPUs for a per-CPU map, `None` otherwise.
    pub fn new(key_size: usize, value_size: usize, ncpus: Option<usize>, batch: usize) -> Self {
        let entry_size = match ncpus {
            Some(n) => value_stride(value_size) * n,
            None => value_size,
        };
        let batch = batch.max(1);
        let cursor = key_size.max(8);
        BatchReader {
            key_size,
            entry_size,
            batch,
            keys: vec![0; key_size * batch],
            values: vec![0; entry_size * batch],
            cursor_in: vec![0; cursor],
            cursor_out: vec![0; cursor],
            last_calls: 0,
        }
    }

    /// Bytes of one entry's value (all CPUs for a per-CPU map).
    pub fn entry_size(&self) -> usize {
        self.entry_size
    }

    fn grow(&mut self) {
        self.batch *= 2;
        self.keys.resize(self.key_size * self.batch, 0);
        self.values.resize(self.entry_size * self.batch, 0);
    }

    /// Calls `f(key, value)` for every entry, in the kernel's order. Each
    /// entry is delivered once per read: the cursor walks buckets (hash) or
    /// indices (array), so entries added or removed meanwhile are either seen
    /// once or not at all.
    pub fn read_all(
        &mut self,
        fd: BorrowedFd<'_>,
        mut f: impl FnMut(&[u8], &[u8]),
    ) -> io::Result<usize> {
        let mut first = true;
        let mut total = 0;
        self.last_calls = 0;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first {
                    0
                } else {
                    self.cursor_in.as_ptr() as u64
                },
                out_batch: self.cursor_out.as_mut_ptr() as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: self.batch as u32,
                map_fd: fd.as_raw_fd() as u32,
                ..Default::default()
            };
            self.last_calls += 1;
            let done = match sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
                Ok(()) => false,
                Err(e) => match e.raw_os_error() {
                    Some(libc::ENOENT) => true,
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOSPC) if attr.count == 0 => {
                        self.grow();
                        continue;
                    }
                    _ => return Err(e),
                },
            };
            let n = (attr.count as usize).min(self.batch);
            for i in 0..n {
                f(
                    &self.keys[i * self.key_size..(i + 1) * self.key_size],
                    &self.values[i * self.entry_size..(i + 1) * self.entry_size],
                );
            }
            total += n;
            if done {
                return Ok(total);
            }
            std::mem::swap(&mut self.cursor_in, &mut self.cursor_out);
            first = false;
        }
    }
}

/// A shared, read-write mapping of a BPF_F_MMAPABLE array.
#[derive(Debug)]
pub struct MmapArray {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all access goes through
// atomics, so it may be used from any thread.
unsafe impl Send for MmapArray {}
// SAFETY: as above, reads and writes are atomic operations.
unsafe impl Sync for MmapArray {}

impl MmapArray {
    /// Maps `bytes` (rounded up to whole pages) of the array behind `fd`.
    pub fn map(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<Self> {
        let page = page_size();
        let len = bytes.div_ceil(page).max(1) * page;
        // SAFETY: a fresh shared mapping of a file descriptor we borrow for
        // the duration of the call; the kernel checks that the map is
        // mmapable and at least `len` long (EINVAL otherwise).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(MmapArray { ptr, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn word(&self, off: usize) -> Option<&AtomicU64> {
        if !off.is_multiple_of(8) || off + 8 > self.len {
            return None;
        }
        // SAFETY: in bounds and 8-byte aligned (the mapping is page aligned);
        // the memory lives as long as `self`, and AtomicU64 has the layout of u64.
        Some(unsafe { &*(self.ptr.as_ptr().add(off) as *const AtomicU64) })
    }

    /// Copies `out.len()` bytes (a multiple of 8) at `off` with one relaxed
    /// atomic load per word. Returns false if out of range.
    pub fn read(&self, off: usize, out: &mut [u8]) -> bool {
        if !out.len().is_multiple_of(8) || off.checked_add(out.len()).is_none_or(|e| e > self.len) {
            return false;
        }
        for (i, chunk) in out.as_chunks_mut::<8>().0.iter_mut().enumerate() {
            match self.word(off + i * 8) {
                Some(w) => *chunk = w.load(Ordering::Relaxed).to_ne_bytes(),
                None => return false,
            }
        }
        true
    }

    /// Zeroes `len` bytes (a multiple of 8) at `off` with atomic stores.
    pub fn zero(&self, off: usize, len: usize) -> bool {
        if !len.is_multiple_of(8) || off.checked_add(len).is_none_or(|e| e > self.len) {
            return false;
        }
        for i in (0..len).step_by(8) {
            match self.word(off + i) {
                Some(w) => w.store(0, Ordering::Relaxed),
                None => return false,
            }
        }
        true
    }
}

impl Drop for MmapArray {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `map`; no references
        // into it outlive `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// Interface index of `name` in the calling thread's network namespace.
pub fn if_nametoindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// Moves the calling thread into the named network namespace
/// (`/run/netns/NAME`, as `ip netns add` creates). The mount namespace is
/// unchanged, so the host's bpffs stays visible.
pub fn enter_netns(name: &str) -> io::Result<()> {
    if name.is_empty() || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad namespace name {name:?}"),
        ));
    }
    let f = std::fs::File::open(Path::new("/run/netns").join(name))?;
    // SAFETY: a valid namespace fd; setns only changes this thread's netns.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

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

/// True if `path` is the root of a mounted bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct we pass; `c` is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Mounts a bpffs at `path` (which must exist).
pub fn mount_bpffs(path: &Path) -> io::Result<()> {
    let target = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: all arguments are valid NUL-terminated strings or null data.
    let r = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

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

/// Receives up to `bufs.len()` datagrams with one `recvmmsg(2)` call,
/// without blocking. `lens[i]` gets the size of datagram `i`; returns how
/// many arrived (`WouldBlock` when none is queued). A datagram longer than
/// its buffer is cut and its length reported as buffer length + 1.
pub fn recv_mmsg(
    fd: BorrowedFd<'_>,
    bufs: &mut [Vec<u8>],
    lens: &mut [usize],
) -> io::Result<usize> {
    let n = bufs.len().min(lens.len()).min(64);
    if n == 0 {
        return Ok(0);
    }
    let mut iov: Vec<libc::iovec> = bufs[..n]
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain data; all-zero is a valid value (no name,
    // no control data) and the iovec pointers are filled in below.
    let mut msgs: Vec<libc::mmsghdr> = (0..n).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `msgs` holds `n` initialised headers whose iovecs point into
    // `bufs`, which outlive the call and are not otherwise borrowed; the
    // kernel writes at most `iov_len` bytes into each.
    let r = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            n as libc::c_uint,
            // c_int on glibc, c_uint on musl.
            libc::MSG_DONTWAIT as _,
            std::ptr::null_mut(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let r = r as usize;
    for ((l, m), b) in lens.iter_mut().zip(&msgs[..r]).zip(bufs.iter()) {
        // A truncated datagram is reported as one byte longer than its
        // buffer, so the caller can tell (and drop) it.
        *l = if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            b.len() + 1
        } else {
            m.msg_len as usize
        };
    }
    Ok(r)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Copies a plain-old-data value out of a byte slice of at least its size
/// (shorter slices give the default value).
pub fn read_pod<T: aya::Pod + Default>(b: &[u8]) -> T {
    if b.len() < size_of::<T>() {
        return T::default();
    }
    let mut v = T::default();
    // SAFETY: T is Pod (any bit pattern valid, no padding) and `b` holds at
    // least size_of::<T>() bytes; the copy is byte-wise, so alignment is moot.
    unsafe {
        std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast::<u8>(), size_of::<T>())
    };
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides() {
        assert_eq!(value_stride(1), 8);
        assert_eq!(value_stride(8), 8);
        assert_eq!(value_stride(12), 16);
        assert_eq!(value_stride(128), 128);
    }

    #[test]
    fn batch_reader_sizes_per_cpu_entries() {
        let r = BatchReader::new(24, 20, Some(3), 16);
        assert_eq!(r.entry_size(), 24 * 3);
        let r = BatchReader::new(4, 20, None, 16);
        assert_eq!(r.entry_size(), 20);
    }

    #[test]
    fn mmap_of_anonymous_memfd_reads_and_zeroes_words() {
        // A memfd stands in for the BPF array: same mmap/atomics path.
        // SAFETY (test): memfd_create with a valid name; the fd is owned below.
        let fd = unsafe { libc::memfd_create(c"gw-test".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY (test): fd is a fresh descriptor we own.
        let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let file = std::fs::File::from(owned);
        file.set_len(8192).unwrap();
        use std::os::fd::AsFd;
        let m = MmapArray::map(file.as_fd(), 100).unwrap();
        assert_eq!(m.len(), page_size().max(4096));
        let mut w = std::fs::File::try_clone(&file).unwrap();
        use std::io::{Seek, Write};
        w.seek(std::io::SeekFrom::Start(16)).unwrap();
        w.write_all(&42u64.to_ne_bytes()).unwrap();
        let mut out = [0u8; 16];
        assert!(m.read(8, &mut out));
        assert_eq!(u64::from_ne_bytes(out[8..].try_into().unwrap()), 42);
        assert!(m.zero(16, 8));
        assert!(m.read(8, &mut out));
        assert_eq!(out, [0; 16]);
        // Out of range and misaligned requests are refused, not undefined.
        assert!(!m.read(m.len() - 8, &mut [0u8; 16]));
        assert!(!m.read(4, &mut [0u8; 8]));
        assert!(!m.zero(0, 7));
    }

    #[test]
    fn bad_netns_names_are_rejected() {
        assert!(enter_netns("").is_err());
        assert!(enter_netns("../x").is_err());
    }

    #[test]
    fn recv_mmsg_takes_several_datagrams() {
        use std::os::fd::AsFd;
        // recvmmsg: several queued datagrams in one call, sizes right.
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..5u8 {
            tx.send_to(&vec![i; 100 + i as usize], rx.local_addr().unwrap())
                .unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut bufs = vec![vec![0u8; 2048]; 8];
        let mut lens = [0usize; 8];
        let n = recv_mmsg(rx.as_fd(), &mut bufs, &mut lens).unwrap();
        assert_eq!(n, 5);
        for i in 0..5 {
            assert_eq!(lens[i], 100 + i);
            assert!(bufs[i][..lens[i]].iter().all(|b| *b == i as u8));
        }
        let e = recv_mmsg(rx.as_fd(), &mut bufs, &mut lens).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }
}

// --- Probes of `gateway check` ------------------------------------------------

const BPF_LINK_CREATE: libc::c_long = 28;

/// `union bpf_attr` for BPF_LINK_CREATE (the common prefix of every kind).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target: u32,
    attach_type: u32,
    flags: u32,
}

/// BPF_LINK_CREATE of attach type `attach_type` with an invalid program fd
/// (-1), so that nothing can be created. Kernels that know the command and
/// the attach type fail with EBADF (the program fd); older ones with EINVAL.
/// Returns the error the kernel gave (`None` if it unexpectedly succeeded,
/// which cannot happen without a program).
pub fn link_create_without_program(attach_type: u32) -> Option<io::Error> {
    let mut attr = LinkCreateAttr {
        prog_fd: u32::MAX,
        attach_type,
        ..Default::default()
    };
    sys_bpf(BPF_LINK_CREATE, &mut attr).err()
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

/// A netlink socket of `protocol` (e.g. NETLINK_GENERIC) in the calling
/// thread's network namespace, as a `File`: requests are written to it and
/// answers read from it (the kernel is the default peer).
pub fn netlink_socket(protocol: i32) -> io::Result<std::fs::File> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    Ok(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// The driver name of an interface (ETHTOOL_GDRVINFO), looked up in the
/// calling thread's network namespace.
pub fn ethtool_driver(iface: &str) -> io::Result<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 3;
    /// `struct ethtool_drvinfo` (linux/ethtool.h).
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    /// `struct ifreq` with the `ifr_data` member.
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    if iface.is_empty() || iface.len() >= libc::IFNAMSIZ || iface.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: DrvInfo is plain data; all-zero is valid.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut info,
        _pad: [0; 16],
    };
    req.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: SIOCETHTOOL takes a `struct ifreq` whose ifr_data points to
    // an ethtool command struct; both live for the duration of the call and
    // the kernel writes at most size_of::<DrvInfo>() bytes into `info`.
    // (The request argument is c_ulong on glibc and c_int on musl.)
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}
