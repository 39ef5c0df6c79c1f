//! SM3 (GB/T 32905) and HMAC-SM3 (RFC 2104).
//!
//! [`Sm3`] is a streaming hasher; its state after whole blocks can be kept,
//! which [`HmacSm3`] uses: the states after `K ⊕ ipad` and `K ⊕ opad` are
//! computed once per key, so a MAC costs the message's blocks plus two
//! (one inner final, one outer) instead of four more.
//!
//! The compression function is `portable` (rounds unrolled, the message
//! expansion computed as it goes) or `sm3-ce` on aarch64 CPUs with the SM3
//! instructions. `GMCRYPT_SM3` forces one by name.

mod portable;

use crate::arch;

/// An SM3 compression implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Impl {
    /// aarch64: the SM3 instructions (`sm3ss1`, `sm3tt1a`, ...).
    Sm3Ce,
    /// Any CPU.
    Portable,
}

impl Impl {
    /// Every implementation, in order of preference.
    pub const ALL: [Impl; 2] = [Impl::Sm3Ce, Impl::Portable];

    /// The name `GMCRYPT_SM3` and reports use.
    pub fn name(self) -> &'static str {
        match self {
            Impl::Sm3Ce => "sm3-ce",
            Impl::Portable => "portable",
        }
    }

    /// The implementation called `name`.
    pub fn from_name(name: &str) -> Option<Impl> {
        Impl::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Why this CPU cannot run it (`None`: it can).
    pub fn unavailable(self) -> Option<&'static str> {
        arch::sm3_unavailable(self)
    }

    /// The fastest implementation this CPU runs.
    pub fn best() -> Impl {
        Impl::ALL
            .into_iter()
            .find(|i| i.unavailable().is_none())
            .unwrap_or(Impl::Portable)
    }
}

impl std::fmt::Display for Impl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which implementation this process uses, and why (see [`crate::sm4::Selection`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The implementation.
    pub imp: Impl,
    /// "detected", "GMCRYPT_SM3=<name>", or why the forced name was not taken.
    pub reason: String,
}

/// The process-wide default: `GMCRYPT_SM3` if it names an implementation
/// this CPU runs, else [`Impl::best`]. Read once.
pub fn selected() -> &'static Selection {
    static SEL: std::sync::OnceLock<Selection> = std::sync::OnceLock::new();
    SEL.get_or_init(|| {
        let best = Impl::best();
        match std::env::var("GMCRYPT_SM3").ok().as_deref().map(str::trim) {
            None | Some("") => Selection {
                imp: best,
                reason: "detected".into(),
            },
            Some(v) => match Impl::from_name(v).map(|i| (i, i.unavailable())) {
                Some((i, None)) => Selection {
                    imp: i,
                    reason: format!("GMCRYPT_SM3={v}"),
                },
                Some((_, Some(why))) => Selection {
                    imp: best,
                    reason: format!("GMCRYPT_SM3={v} not taken: {why}"),
                },
                None => Selection {
                    imp: best,
                    reason: format!("GMCRYPT_SM3={v} not taken: no such implementation"),
                },
            },
        }
    })
}

const IV: [u32; 8] = [
    0x7380166f, 0x4914b2b9, 0x172442d7, 0xda8a0600, 0xa96f30bc, 0x163138aa, 0xe38dee4d, 0xb0fb0e4e,
];

/// Compresses whole blocks into `state` with `imp`.
#[inline]
pub fn compress(imp: Impl, state: &mut [u32; 8], blocks: &[[u8; 64]]) {
    if imp != Impl::Portable && arch::sm3_compress(imp, state, blocks) {
        return;
    }
    portable::compress(state, blocks)
}

/// A streaming SM3 hasher.
#[derive(Clone)]
pub struct Sm3 {
    state: [u32; 8],
    buf: [u8; 64],
    buf_len: usize,
    /// Bytes hashed so far (whole blocks and buffer).
    len: u64,
    imp: Impl,
}

impl std::fmt::Debug for Sm3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sm3")
            .field("imp", &self.imp)
            .finish_non_exhaustive()
    }
}

impl Default for Sm3 {
    fn default() -> Sm3 {
        Sm3::new()
    }
}

impl Sm3 {
    /// A hasher with the process's implementation ([`selected`]).
    pub fn new() -> Sm3 {
        Sm3::with_impl(selected().imp)
    }

    /// A hasher with a given implementation (the portable one if this CPU
    /// cannot run it: check [`Impl::unavailable`] first to know).
    pub fn with_impl(imp: Impl) -> Sm3 {
        let imp = if imp.unavailable().is_none() {
            imp
        } else {
            Impl::Portable
        };
        Sm3 {
            state: IV,
            buf: [0; 64],
            buf_len: 0,
            len: 0,
            imp,
        }
    }

    /// The implementation this hasher uses.
    pub fn implementation(&self) -> Impl {
        self.imp
    }

    /// Hashes more bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        if self.buf_len > 0 {
            let take = (64 - self.buf_len).min(data.len());
            self.buf[self.buf_len..self.buf_len + take].copy_from_slice(&data[..take]);
            self.buf_len += take;
            data = &data[take..];
            if self.buf_len < 64 {
                return;
            }
            let b = self.buf;
            compress(self.imp, &mut self.state, &[b]);
            self.buf_len = 0;
        }
        let (blocks, rest) = data.as_chunks::<64>();
        if !blocks.is_empty() {
            compress(self.imp, &mut self.state, blocks);
        }
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buf_len = rest.len();
    }

    /// The digest (padding with the 64-bit bit length, GB/T 32905 5.2).
    pub fn finalize(mut self) -> [u8; 32] {
        let bits = self.len.wrapping_mul(8);
        let mut last = [[0u8; 64]; 2];
        let n = self.buf_len;
        last[0][..n].copy_from_slice(&self.buf[..n]);
        last[0][n] = 0x80;
        let blocks = if n < 56 { 1 } else { 2 };
        last[blocks - 1][56..].copy_from_slice(&bits.to_be_bytes());
        compress(self.imp, &mut self.state, &last[..blocks]);
        let mut out = [0u8; 32];
        for (o, w) in out.as_chunks_mut::<4>().0.iter_mut().zip(self.state) {
            *o = w.to_be_bytes();
        }
        out
    }
}

/// SM3 digest of `data`.
pub fn sm3(data: &[u8]) -> [u8; 32] {
    let mut h = Sm3::new();
    h.update(data);
    h.finalize()
}

const BLOCK: usize = 64;

/// HMAC-SM3 with the inner and outer states precomputed per key. `Debug`
/// shows nothing of the key.
#[derive(Clone)]
pub struct HmacSm3 {
    inner: Sm3,
    outer: Sm3,
}

impl std::fmt::Debug for HmacSm3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacSm3 { .. }")
    }
}

impl HmacSm3 {
    /// Keys longer than the 64-byte block are hashed first (RFC 2104).
    pub fn new(key: &[u8]) -> HmacSm3 {
        HmacSm3::with_impl(key, selected().imp)
    }

    /// With a given compression implementation.
    pub fn with_impl(key: &[u8], imp: Impl) -> HmacSm3 {
        let mut k = [0u8; BLOCK];
        if key.len() > BLOCK {
            let mut h = Sm3::with_impl(imp);
            h.update(key);
            k[..32].copy_from_slice(&h.finalize());
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let mut ipad = [0x36u8; BLOCK];
        let mut opad = [0x5cu8; BLOCK];
        for i in 0..BLOCK {
            ipad[i] ^= k[i];
            opad[i] ^= k[i];
        }
        let mut inner = Sm3::with_impl(imp);
        inner.update(&ipad);
        let mut outer = Sm3::with_impl(imp);
        outer.update(&opad);
        HmacSm3 { inner, outer }
    }

    /// HMAC over the concatenation of parts.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut h = self.inner.clone();
        for p in parts {
            h.update(p);
        }
        let inner = h.finalize();
        let mut o = self.outer.clone();
        o.update(&inner);
        o.finalize()
    }
}

/// HMAC-SM3 of `data` under `key`.
pub fn hmac_sm3(key: &[u8], data: &[u8]) -> [u8; 32] {
    HmacSm3::new(key).mac(&[data])
}

#[cfg(test)]
mod tests;
