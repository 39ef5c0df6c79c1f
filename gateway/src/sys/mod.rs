//! Every raw system call of the daemon, behind safe wrappers, one file per
//! family (as aya's `aya/src/sys/`): `bpf(2)` and the BPF ABI numbers,
//! mmap of BPF arrays, sockets and namespaces, netlink, the process's
//! privileges and limits, clocks. Nothing outside this module (and the
//! data plane's loader, which goes through aya) uses `unsafe`.
#![allow(unsafe_code)]

pub mod bpf;
pub mod clock;
pub mod mmap;
pub mod net;
pub mod netlink;
pub mod process;

pub use bpf::{
    create_map, create_map_flags, delete_elem, is_bpffs, link_create_without_program, lookup_elem,
    mount_bpffs, pod_bytes, read_pod, update_elem, value_stride, BatchReader,
};
pub use clock::{clock_monotonic, instant_of, monotonic_ns, wall_ms};
pub use mmap::{page_size, MmapArray};
pub use net::{enter_netns, ethtool_driver, if_nametoindex, recv_mmsg};
pub use netlink::{netlink_socket, xdp_features};
pub use process::{effective_caps, is_root, memlock_limit, pin_thread_to_cpu};
