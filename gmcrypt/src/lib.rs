//! SM4 (GB/T 32907) and SM3 (GB/T 32905) at hardware speed, pure Rust.
//!
//! Each primitive has several implementations and picks the fastest the
//! CPU runs, at run time:
//!
//! | SM4 ([`sm4::Impl`]) | needs | blocks per call |
//! | --- | --- | --- |
//! | `gfni-avx512` | x86_64 GFNI + AVX-512 F/BW/VL | 16 |
//! | `gfni-avx2` | x86_64 GFNI + AVX2 | 8 |
//! | `vaes-avx2` | x86_64 VAES + AES-NI + AVX2 | 8 |
//! | `aesni-avx2` | x86_64 AES-NI + AVX2 | 8 |
//! | `sm4-ce` | aarch64 SM4 instructions (FEAT_SM4) | 8 (4 rounds per `sm4e`) |
//! | `neon` | aarch64 Advanced SIMD | 4 |
//! | `portable` | anything | 1 (4 interleaved) |
//!
//! SM3 ([`sm3::Impl`]): `sm3-ce` (aarch64 SM3 instructions), `portable`,
//! and on x86_64 multi-buffer SM3 over several messages at once
//! (`avx512-x16`: 16 messages per call, `avx2-x8`: 8), which
//! [`sm3::HmacSm3::mac_many`] uses for the tags of many packets.
//!
//! `GMCRYPT_SM4` and `GMCRYPT_SM3` (environment, read once) force an
//! implementation by name; the API ([`sm4::Sm4::with_impl`]) forces one per
//! key. How the S-box maps onto AES-NI and GFNI: [`sm4`].
//!
//! `unsafe` lives in `src/arch/` only (the intrinsics and `asm!`), behind
//! safe functions that take a token proving the CPU feature was detected.

#![deny(unsafe_code)]

mod arch;
pub mod sm3;
pub mod sm4;

/// The implementation an environment variable `var` (value `value`) asks
/// for, and why: the named one if this CPU runs it, else `best`, with the
/// reason ("detected", "VAR=name", or why the name was not taken).
pub(crate) fn choose<I: Copy>(
    var: &str,
    value: Option<&str>,
    best: I,
    from_name: fn(&str) -> Option<I>,
    unavailable: fn(I) -> Option<&'static str>,
) -> (I, String) {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => (best, "detected".into()),
        Some(v) => match from_name(v).map(|i| (i, unavailable(i))) {
            Some((i, None)) => (i, format!("{var}={v}")),
            Some((_, Some(why))) => (best, format!("{var}={v} not taken: {why}")),
            None => (best, format!("{var}={v} not taken: no such implementation")),
        },
    }
}
