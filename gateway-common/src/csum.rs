//! Incremental Internet checksum update (RFC 1624, eqn. 3):
//! `HC' = ~(~HC + ~m + m')`, summed over every 16-bit word that changes.
//!
//! Words are taken in the byte order they have in the packet, loaded as
//! native-endian `u16` (the one's-complement sum does not depend on byte
//! order as long as it is consistent), so the kernel programs never swap
//! bytes. Plain Rust: the XDP/TC relay and the host tests run the same code.

/// The changes to one checksum, accumulated word by word.
#[derive(Clone, Copy, Default)]
pub struct Incremental(u32);

impl Incremental {
    pub const fn new() -> Self {
        Incremental(0)
    }

    /// One 16-bit word changes from `old` to `new` (both as loaded from the
    /// packet bytes with `u16::from_ne_bytes`).
    #[inline(always)]
    pub fn word(&mut self, old: u16, new: u16) {
        // At most a few dozen words per packet: no overflow of u32.
        self.0 += (!old) as u32 + new as u32;
    }

    /// The checksum field after the changes, given its value before.
    #[inline(always)]
    pub fn apply(self, old_csum: u16) -> u16 {
        let mut s = (!old_csum) as u32 + self.0;
        s = (s & 0xffff) + (s >> 16);
        s = (s & 0xffff) + (s >> 16);
        !(s as u16)
    }

    /// For UDP: a checksum of 0 means "none" (IPv4), and a computed 0 is
    /// sent as 0xffff.
    #[inline(always)]
    pub fn apply_udp(self, old_csum: u16) -> u16 {
        match self.apply(old_csum) {
            0 => 0xffff,
            c => c,
        }
    }
}

/// Full Internet checksum of `data` (one's-complement sum folded and
/// inverted), with `initial` added first (a pseudo-header sum). For tests
/// and the daemon; words are read native-endian like [`Incremental`].
pub fn full(initial: u32, data: &[u8]) -> u16 {
    let mut s: u64 = initial as u64;
    let (words, rest) = data.as_chunks::<2>();
    for w in words {
        s += u16::from_ne_bytes(*w) as u64;
    }
    if let [b] = rest {
        s += u16::from_ne_bytes([*b, 0]) as u64;
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic byte generator (no external crates in this crate).
    fn bytes(seed: u32, n: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    #[test]
    fn incremental_equals_full_recompute() {
        for seed in 0..500u32 {
            let mut data = bytes(seed, 64);
            // Field at 10..12 holds the checksum of the rest.
            data[10] = 0;
            data[11] = 0;
            let c = full(0, &data);
            data[10..12].copy_from_slice(&c.to_ne_bytes());
            assert_eq!(full(0, &data), 0, "a valid checksum sums to zero");
            // Change a few words at even offsets.
            let new = bytes(seed + 7777, 64);
            let mut inc = Incremental::new();
            for off in [0usize, 2, 12, 20, 40, 62] {
                let old = u16::from_ne_bytes([data[off], data[off + 1]]);
                let nw = u16::from_ne_bytes([new[off], new[off + 1]]);
                inc.word(old, nw);
                data[off] = new[off];
                data[off + 1] = new[off + 1];
            }
            let old_c = u16::from_ne_bytes([data[10], data[11]]);
            data[10..12].copy_from_slice(&inc.apply(old_c).to_ne_bytes());
            let mut check = data.clone();
            check[10] = 0;
            check[11] = 0;
            let want = full(0, &check);
            // 0x0000 and 0xffff are the same one's-complement value.
            let got = u16::from_ne_bytes([data[10], data[11]]);
            assert!(
                got == want || (got == 0xffff && want == 0) || (got == 0 && want == 0xffff),
                "seed {seed}: incremental {got:#06x} vs full {want:#06x}"
            );
        }
    }

    #[test]
    fn udp_zero_becomes_ffff() {
        // A change that makes the sum come out as 0.
        let mut inc = Incremental::new();
        inc.word(0, 0);
        assert_eq!(inc.apply(0xffff), 0);
        assert_eq!(inc.apply_udp(0xffff), 0xffff);
    }
}
