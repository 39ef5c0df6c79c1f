//! The gateway's integration tests, in one test binary (as aya's
//! `test/integration-test`): one module per area, the shared helpers in the
//! `gateway_tests` library (`tests/src`), which the benchmarks use too.
//! One binary links the gateway once instead of once per area.
//!
//! Tests that need root (BPF, network namespaces) say so in their name or
//! module and skip with a printed reason without it; CI runs as root.
//!
//! `cargo xtask test` runs them one at a time (`RUST_TEST_THREADS=1`):
//! many count media packets exactly, and two media tests side by side on a
//! 2-core machine have lost a packet to a full queue. A plain `cargo test`
//! runs them side by side in threads of this one process, so none may rely
//! on a process of its own:
//! - ports: loopback ports come from `sipp::free_port`; the fixed media
//!   port ranges of daemons on loopback are disjoint and below the
//!   kernel's ephemeral range (32768-60999), so `free_port` never hands
//!   them out: `sip_sessions` 31000-31009, `cascade` 31100-31101 (the
//!   central platform, restarted on its ports), `storm` 31110-31111 (the
//!   same), `cascade_invite` 31200-31399 (one
//!   range per test), `media_sessions` 32000-32019,
//!   `media_bad_input` 32100-32119, `sm4_media` 32200-32299, `device_control` 32300-32339 (and the
//!   default 30000-30999 of daemons that configure none). Daemons in
//!   namespaces have their namespace's ports to themselves;
//! - network namespaces and veth pairs come from `netns::NetnsPair` (or
//!   `netns::NetnsChain`), whose names are unique per process and test;
//! - namespaces are entered only on threads of their own
//!   (`netns::in_netns`), never on a test's thread;
//! - scratch directories are `sipp::TempDir`s (or unique per test), and
//!   no test changes the working directory or the environment;
//! - no test executes a file this process wrote: another thread spawning a
//!   child meanwhile would hold it open for writing and make the exec fail
//!   with ETXTBSY. The gateway copies that run as an unprivileged user are
//!   made by install(1) (`unpriv::Sandbox`).

mod cascade;
mod cascade_invite;
mod cascade_relay;
mod check;
mod cli_errors;
mod dashboards;
mod device_control;
mod dist;
mod kernel_relay;
mod media_bad_input;
mod media_netns;
mod media_sessions;
mod metrics_prometheus;
mod netns_attach;
mod relay_test_run;
mod restart;
mod sim_netns;
mod sip_bad_input;
mod sip_guard;
mod sip_sessions;
mod sip_sipp;
mod sm4_media;
mod soak;
mod storm;
mod xdp_prog_test_run;
