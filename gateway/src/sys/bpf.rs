//! `bpf(2)`: the commands aya 0.16 has no API for (BPF_MAP_LOOKUP_BATCH,
//! a plain BPF_MAP_LOOKUP_ELEM for the per-key baseline, map creation for
//! probes and benchmarks, BPF_LINK_CREATE probes), bpffs, and every BPF ABI
//! number the daemon uses, in one place.
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
};

// --- ABI numbers (include/uapi/linux/bpf.h) ----------------------------------

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_LINK_CREATE: libc::c_long = 28;

/// `enum bpf_map_type`.
pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
pub const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
pub const BPF_MAP_TYPE_LRU_PERCPU_HASH: u32 = 10;
/// Map flag: the array can be mmapped.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
/// `enum bpf_attach_type`: BPF_XDP.
pub const BPF_XDP: u32 = 37;
/// Update flags of BPF_MAP_UPDATE_ELEM.
pub const BPF_ANY: u64 = 0;
pub const BPF_NOEXIST: u64 = 1;
pub const BPF_EXIST: u64 = 2;
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
}
