//! GB/T 28181 protocol logic without I/O: SIP wire handling on top of rsip,
//! digest authentication, the RFC 3261 transaction state machines and
//! MANSCDP (the XML bodies of MESSAGE requests). Pure functions and state
//! machines with injected time, so they are unit-tested and fuzzed here and
//! cross-tested under qemu-user.

pub mod control;
pub mod digest;
pub mod manscdp;
pub mod mansrtsp;
pub mod sdp;
pub mod sip;
pub mod transaction;
pub mod wire;
