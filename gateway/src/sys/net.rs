//! Sockets and network namespaces: setns into a named namespace,
//! recvmmsg for batched media receives, interface look-ups (index,
//! ethtool driver name).

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, BorrowedFd},
    path::Path,
};

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

/// Receives up to `bufs.len()` datagrams with one `recvmmsg(2)` call,
/// without blocking. `lens[i]` gets the size of datagram `i`; returns how
/// many arrived (`WouldBlock` when none is queued). A datagram longer than
/// its buffer is cut and its length reported as buffer length + 1.
pub fn recv_mmsg(
    fd: BorrowedFd<'_>,
    bufs: &mut [Vec<u8>],
    lens: &mut [usize],
) -> io::Result<usize> {
    recv_mmsg_from(fd, bufs, lens, &mut [])
}

/// As [`recv_mmsg`], and `srcs[i]` gets the source address of datagram
/// `i` (for the first `srcs.len()` datagrams; `None` if not IP).
pub fn recv_mmsg_from(
    fd: BorrowedFd<'_>,
    bufs: &mut [Vec<u8>],
    lens: &mut [usize],
    srcs: &mut [Option<std::net::SocketAddr>],
) -> io::Result<usize> {
    let n = bufs.len().min(lens.len()).min(64);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut names: Vec<libc::sockaddr_storage> = (0..srcs.len().min(n))
        .map(|_| unsafe { std::mem::zeroed() })
        .collect();
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
    for (m, name) in msgs.iter_mut().zip(names.iter_mut()) {
        m.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
        m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    }
    // SAFETY: `msgs` holds `n` initialised headers whose iovecs point into
    // `bufs` and whose names (if any) point into `names`, which outlive
    // the call and are not otherwise borrowed; the kernel writes at most
    // `iov_len` bytes into each buffer and `msg_namelen` into each name.
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
    for ((src, m), name) in srcs.iter_mut().zip(&msgs[..r]).zip(&names) {
        *src = sockaddr(name, m.msg_hdr.msg_namelen);
    }
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

/// An IPv4/IPv6 socket address from a `sockaddr_storage` the kernel filled.
fn sockaddr(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    let len = len as usize;
    match s.ss_family as i32 {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says sockaddr_in, and it fits (checked).
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says sockaddr_in6, and it fits (checked).
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut srcs = [None; 2];
        let n = recv_mmsg_from(rx.as_fd(), &mut bufs, &mut lens, &mut srcs).unwrap();
        assert_eq!(
            srcs[0],
            Some(tx.local_addr().unwrap()),
            "source of the first datagram"
        );
        assert_eq!(n, 5);
        for i in 0..5 {
            assert_eq!(lens[i], 100 + i);
            assert!(bufs[i][..lens[i]].iter().all(|b| *b == i as u8));
        }
        let e = recv_mmsg(rx.as_fd(), &mut bufs, &mut lens).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }
}
