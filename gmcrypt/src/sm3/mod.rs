//! SM3 (GB/T 32905) and HMAC-SM3 (RFC 2104).
//!
//! [`Sm3`] is a streaming hasher; its state after whole blocks can be kept,
//! which [`HmacSm3`] uses: the states after `K ⊕ ipad` and `K ⊕ opad` are
//! computed once per key, so a MAC costs the message's blocks plus two
//! (one inner final, one outer) instead of four more.
//!
//! The compression function is `portable` (rounds unrolled, literal
//! indices) or `sm3-ce` on aarch64 CPUs with the SM3 instructions. One
//! message's blocks are sequential; several messages go through the x86_64
//! multi-buffer kernels together, one message per SIMD lane
//! ([`finish_many`], [`HmacSm3::mac_many`], [`hmac_many`]). `GMCRYPT_SM3`
//! forces an implementation by name (`portable` turns the lanes off).

mod portable;

use crate::arch;

/// An SM3 implementation. One message's blocks are sequential, so the
/// x86_64 ones speed up several messages at once (one per SIMD lane:
/// [`finish_many`], [`HmacSm3::mac_many`]); a single message goes through
/// the portable compression there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Impl {
    /// aarch64: the SM3 instructions (`sm3ss1`, `sm3tt1a`, ...).
    Sm3Ce,
    /// x86_64 AVX-512: 16 messages per call.
    Avx512x16,
    /// x86_64 AVX2: 8 messages per call.
    Avx2x8,
    /// Any CPU.
    Portable,
}

impl Impl {
    /// Every implementation, in order of preference.
    pub const ALL: [Impl; 4] = [Impl::Sm3Ce, Impl::Avx512x16, Impl::Avx2x8, Impl::Portable];

    /// The name `GMCRYPT_SM3` and reports use.
    pub fn name(self) -> &'static str {
        match self {
            Impl::Sm3Ce => "sm3-ce",
            Impl::Avx512x16 => "avx512-x16",
            Impl::Avx2x8 => "avx2-x8",
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

    /// Messages per multi-buffer call (1: one at a time).
    pub fn lanes(self) -> usize {
        match self {
            Impl::Avx512x16 => 16,
            Impl::Avx2x8 => 8,
            Impl::Sm3Ce | Impl::Portable => 1,
        }
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
        let (imp, reason) = crate::choose(
            "GMCRYPT_SM3",
            std::env::var("GMCRYPT_SM3").ok().as_deref(),
            Impl::best(),
            Impl::from_name,
            Impl::unavailable,
        );
        Selection { imp, reason }
    })
}

const fn t_rot() -> [u32; 64] {
    let mut t = [0u32; 64];
    let mut j = 0;
    while j < 64 {
        let tj: u32 = if j < 16 { 0x79cc4519 } else { 0x7a879d8a };
        t[j] = tj.rotate_left((j % 32) as u32);
        j += 1;
    }
    t
}

/// The round constants `T_j <<< (j mod 32)` (GB/T 32905 4.2, 5.3.3), for
/// every implementation.
pub(crate) const TJ: [u32; 64] = t_rot();

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

impl HmacSm3 {
    /// HMACs of several messages (each the concatenation of its parts)
    /// under this key, computed in parallel lanes: `out[i]` for `msgs[i]`.
    /// Panics if the lengths differ.
    pub fn mac_many(&self, msgs: &[&[&[u8]]], out: &mut [[u8; 32]]) {
        let keys = vec![self; msgs.len()];
        hmac_many(&keys, msgs, out)
    }
}

/// HMACs of several messages under their own keys (`keys[i]` for
/// `msgs[i]`), in parallel lanes. Panics if the lengths differ.
pub fn hmac_many(keys: &[&HmacSm3], msgs: &[&[&[u8]]], out: &mut [[u8; 32]]) {
    assert!(
        keys.len() == msgs.len() && msgs.len() == out.len(),
        "one key and output per message"
    );
    let inner: Vec<&Sm3> = keys.iter().map(|k| &k.inner).collect();
    let mut digests = vec![[0u8; 32]; msgs.len()];
    finish_many(&inner, msgs, &mut digests);
    let outer: Vec<&Sm3> = keys.iter().map(|k| &k.outer).collect();
    let parts: Vec<[&[u8]; 1]> = digests.iter().map(|d| [&d[..]]).collect();
    let msgs2: Vec<&[&[u8]]> = parts.iter().map(|p| &p[..]).collect();
    finish_many(&outer, &msgs2, out);
}

/// Continues several hashes and finalizes them, in parallel lanes where
/// the implementation has them: lane i starts from `starts[i]` (its state
/// so far) and hashes the concatenation of `msgs[i]`'s parts; its digest
/// goes to `out[i]`. Panics if the lengths differ.
pub fn finish_many(starts: &[&Sm3], msgs: &[&[&[u8]]], out: &mut [[u8; 32]]) {
    assert!(
        starts.len() == msgs.len() && msgs.len() == out.len(),
        "one start and output per message"
    );
    let scalar = |i: usize, out: &mut [[u8; 32]]| {
        let mut h = starts[i].clone();
        for p in msgs[i] {
            h.update(p);
        }
        out[i] = h.finalize();
    };
    let mut i = 0;
    while i < msgs.len() {
        let imp = starts[i].imp;
        let w = imp.lanes();
        // A lane group: the next messages whose hashers use `imp` and sit
        // on a block boundary (HMAC states always do).
        let mut end = i;
        while end < msgs.len() && end - i < w && starts[end].imp == imp && starts[end].buf_len == 0
        {
            end += 1;
        }
        if end - i < 2 {
            scalar(i, out);
            i += 1;
            continue;
        }
        let ok = match w {
            16 => lanes::<16>(
                &starts[i..end],
                &msgs[i..end],
                &mut out[i..end],
                arch::sm3_x16,
            ),
            _ => lanes::<8>(
                &starts[i..end],
                &msgs[i..end],
                &mut out[i..end],
                arch::sm3_x8,
            ),
        };
        if !ok {
            for k in i..end {
                scalar(k, out);
            }
        }
        i = end;
    }
}

/// A multi-buffer compression: one block per lane (state words x lanes,
/// block words x lanes); false if this CPU cannot run it.
type LaneKernel<const W: usize> = fn(&mut [[u32; W]; 8], &[[u32; W]; 16]) -> bool;

/// Up to W messages, one per lane; false (nothing written) if the kernel
/// cannot run here.
fn lanes<const W: usize>(
    starts: &[&Sm3],
    msgs: &[&[&[u8]]],
    out: &mut [[u8; 32]],
    kernel: LaneKernel<W>,
) -> bool {
    let n = msgs.len();
    // Each lane's remaining bytes, padded (GB/T 32905 5.2).
    let mut bufs: Vec<Vec<u8>> = Vec::with_capacity(n);
    for (s, parts) in starts.iter().zip(msgs) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut b = Vec::with_capacity(len + 72);
        for p in *parts {
            b.extend_from_slice(p);
        }
        let bits = s.len.wrapping_add(len as u64).wrapping_mul(8);
        b.push(0x80);
        while b.len() % 64 != 56 {
            b.push(0);
        }
        b.extend_from_slice(&bits.to_be_bytes());
        bufs.push(b);
    }
    let mut state = [[0u32; W]; 8];
    for (l, s) in starts.iter().enumerate() {
        for (i, word) in state.iter_mut().enumerate() {
            word[l] = s.state[i];
        }
    }
    let blocks: Vec<usize> = bufs.iter().map(|b| b.len() / 64).collect();
    let most = blocks.iter().copied().max().unwrap_or(0);
    let mut w = [[0u32; W]; 16];
    for k in 0..most {
        for (l, b) in bufs.iter().enumerate() {
            if let Some(block) = b.get(64 * k..64 * k + 64) {
                for (j, c) in block.as_chunks::<4>().0.iter().enumerate() {
                    w[j][l] = u32::from_be_bytes(*c);
                }
            }
        }
        if !kernel(&mut state, &w) {
            return false;
        }
        for (l, &nb) in blocks.iter().enumerate() {
            if nb == k + 1 {
                for (i, word) in state.iter().enumerate() {
                    out[l][4 * i..4 * i + 4].copy_from_slice(&word[l].to_be_bytes());
                }
            }
        }
    }
    true
}

/// HMAC-SM3 of `data` under `key`.
pub fn hmac_sm3(key: &[u8], data: &[u8]) -> [u8; 32] {
    HmacSm3::new(key).mac(&[data])
}

#[cfg(test)]
mod tests;
