//! The gateway daemon and CLI as a library, so integration tests and
//! benchmarks drive the same code.
//!
//! Layers, top to bottom (a module imports only from layers below it;
//! `cargo xtask arch` checks it): `cli` -> `daemon` (wiring) -> `api` ->
//! `sip` -> `session` -> `metrics` -> `stream`, `dataplane` -> `keys` ->
//! `store` -> `sys`; `config` imports nothing from the crate. See
//! docs/architecture.md.

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod keys;
pub mod metrics;
pub mod session;
pub mod sip;
pub mod store;
pub mod stream;
pub mod sys;

pub use dataplane::EBPF_OBJECT;
