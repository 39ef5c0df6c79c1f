//! SM3 (GB/T 32905) and HMAC-SM3 (RFC 2104 with SM3, 64-byte blocks):
//! `gmcrypt`'s, whose HMAC keeps the inner and outer states of each key
//! (two compressions fewer per message). Their tests (GB/T 32905
//! vectors, RFC 2104) are in `gmcrypt`; `tests/openssl_crosscheck.rs`
//! checks them against openssl.

pub use gmcrypt::sm3::{hmac_sm3, sm3, HmacSm3};
