//! The gateway daemon and CLI as a library, so integration tests and
//! benchmarks drive the same code.

pub mod api;
pub mod check;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod exporter;
pub mod keys;
pub mod metrics;
pub mod registry;
pub mod sip;
pub mod store;
pub mod stream;

/// The compiled kernel programs, embedded at build time.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-ebpf"));
