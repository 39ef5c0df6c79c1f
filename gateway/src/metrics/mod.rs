//! Metrics: the control plane's counters ([`sip`]) and the `/metrics`
//! endpoint ([`exporter`]) that renders them with the per-stream and
//! per-device families and the kernel's counters.

pub mod exporter;
pub mod sip;

pub use sip::{class, to_json, SipMetrics};
