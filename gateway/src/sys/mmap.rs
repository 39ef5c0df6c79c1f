//! mmap of BPF_F_MMAPABLE arrays: the stream statistics are read in
//! place, as atomics (the kernel writes them concurrently). Only
//! BPF_MAP_TYPE_ARRAY can be mmapped; its elements are
//! `round_up(value_size, 8)` apart from a page-aligned start.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
