//! Netlink: a raw socket and a minimal generic-netlink codec, enough to
//! ask the `netdev` family for an interface's XDP features (Linux 6.3+).

use std::io::{self, Read as _, Write as _};

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

/// `enum netdev_xdp_act` (linux/netdev.h).
pub const NETDEV_XDP_ACT_BASIC: u64 = 1;
pub const NETDEV_XDP_ACT_RX_SG: u64 = 32;

/// The interface's XDP feature bits from the `netdev` generic netlink
/// family (Linux 6.3+).
pub fn xdp_features(ifindex: u32) -> io::Result<u64> {
    const NETLINK_GENERIC: i32 = 16;
    const GENL_ID_CTRL: u16 = 0x10;
    const CTRL_CMD_GETFAMILY: u8 = 3;
    const CTRL_ATTR_FAMILY_ID: u16 = 1;
    const CTRL_ATTR_FAMILY_NAME: u16 = 2;
    const NETDEV_CMD_DEV_GET: u8 = 1;
    const NETDEV_A_DEV_IFINDEX: u16 = 1;
    const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;

    let mut sock = netlink_socket(NETLINK_GENERIC)?;
    let family = genl_request(
        &mut sock,
        GENL_ID_CTRL,
        CTRL_CMD_GETFAMILY,
        1,
        &[(CTRL_ATTR_FAMILY_NAME, b"netdev\0".as_slice())],
    )
    .map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOENT) {
            io::Error::other("no netdev netlink family")
        } else {
            e
        }
    })?;
    let id = find_attr(&family, CTRL_ATTR_FAMILY_ID)
        .and_then(|v| v.get(..2))
        .map(|v| u16::from_ne_bytes([v[0], v[1]]))
        .ok_or_else(|| io::Error::other("no family id in the answer"))?;
    let dev = genl_request(
        &mut sock,
        id,
        NETDEV_CMD_DEV_GET,
        1,
        &[(NETDEV_A_DEV_IFINDEX, ifindex.to_ne_bytes().as_slice())],
    )?;
    find_attr(&dev, NETDEV_A_DEV_XDP_FEATURES)
        .and_then(|v| v.get(..8))
        .map(|v| u64::from_ne_bytes(v.try_into().unwrap_or([0; 8])))
        .ok_or_else(|| io::Error::other("no xdp-features attribute"))
}

/// Sends one generic netlink request and returns the attributes of the
/// answer (the bytes after the genetlink header).
fn genl_request(
    sock: &mut std::fs::File,
    family: u16,
    cmd: u8,
    version: u8,
    attrs: &[(u16, &[u8])],
) -> io::Result<Vec<u8>> {
    const NLM_F_REQUEST: u16 = 1;
    const NLMSG_ERROR: u16 = 2;
    let mut body = vec![cmd, version, 0, 0];
    for (t, v) in attrs {
        let len = 4 + v.len();
        body.extend_from_slice(&(len as u16).to_ne_bytes());
        body.extend_from_slice(&t.to_ne_bytes());
        body.extend_from_slice(v);
        body.resize(body.len().next_multiple_of(4), 0);
    }
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&family.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel assigns one
    msg.extend_from_slice(&body);
    sock.write_all(&msg)?;
    let mut buf = vec![0u8; 32 * 1024];
    let n = sock.read(&mut buf)?;
    let buf = &buf[..n];
    let bad = || io::Error::other("short netlink answer");
    let len = u32::from_ne_bytes(
        buf.get(0..4)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    ) as usize;
    let kind = u16::from_ne_bytes(
        buf.get(4..6)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    );
    let msg = buf.get(16..len.min(buf.len())).ok_or_else(bad)?;
    if kind == NLMSG_ERROR {
        let errno = i32::from_ne_bytes(
            msg.get(0..4)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        );
        return Err(io::Error::from_raw_os_error(-errno));
    }
    Ok(msg.get(4..).ok_or_else(bad)?.to_vec())
}

/// The payload of the first netlink attribute of type `t`.
fn find_attr(mut attrs: &[u8], t: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty == t {
            return Some(&attrs[4..len]);
        }
        attrs = attrs.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netlink_attributes_are_found_and_bounded() {
        // Two attributes: type 1 (2 bytes, padded to 4) and type 3 (8 bytes).
        let mut a = vec![6, 0, 1, 0, 0x10, 0x00, 0, 0];
        a.extend_from_slice(&[12, 0, 3, 0]);
        a.extend_from_slice(&0x21u64.to_ne_bytes());
        assert_eq!(find_attr(&a, 1), Some(&[0x10, 0x00][..]));
        assert_eq!(find_attr(&a, 3), Some(&0x21u64.to_ne_bytes()[..]));
        assert_eq!(find_attr(&a, 2), None);
        // A length beyond the buffer, or below the header, stops the walk.
        assert_eq!(find_attr(&[200, 0, 1, 0, 0, 0], 1), None);
        assert_eq!(find_attr(&[2, 0, 1, 0, 0, 0], 1), None);
        assert_eq!(find_attr(&[], 1), None);
    }
}
