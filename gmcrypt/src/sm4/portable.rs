//! The portable SM4: four 1 KiB tables combining the S-box and the linear
//! transform L (`T_j[b] = L(S(b) << 8·(3-j))`), so a round is four lookups
//! and XORs. Several blocks are interleaved to hide the load latency.

use super::SBOX;

const fn l(b: u32) -> u32 {
    b ^ b.rotate_left(2) ^ b.rotate_left(10) ^ b.rotate_left(18) ^ b.rotate_left(24)
}

const fn table(shift: u32) -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = l((SBOX[i] as u32) << shift);
        i += 1;
    }
    t
}

static T0: [u32; 256] = table(24);
static T1: [u32; 256] = table(16);
static T2: [u32; 256] = table(8);
static T3: [u32; 256] = table(0);

#[inline(always)]
fn t(x: u32) -> u32 {
    T0[(x >> 24) as usize]
        ^ T1[((x >> 16) & 0xff) as usize]
        ^ T2[((x >> 8) & 0xff) as usize]
        ^ T3[(x & 0xff) as usize]
}

#[inline(always)]
fn load(b: &[u8; 16]) -> [u32; 4] {
    let mut x = [0u32; 4];
    for (i, w) in x.iter_mut().enumerate() {
        *w = u32::from_be_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
    }
    x
}

#[inline(always)]
fn store(x: [u32; 4], b: &mut [u8; 16]) {
    // The output is (X35, X34, X33, X32): the last four words, reversed.
    for i in 0..4 {
        b[4 * i..4 * i + 4].copy_from_slice(&x[3 - i].to_be_bytes());
    }
}

/// One block.
#[inline]
pub(super) fn block(rk: &[u32; 32], b: &mut [u8; 16]) {
    let [mut x0, mut x1, mut x2, mut x3] = load(b);
    for r in rk.as_chunks::<4>().0 {
        x0 ^= t(x1 ^ x2 ^ x3 ^ r[0]);
        x1 ^= t(x2 ^ x3 ^ x0 ^ r[1]);
        x2 ^= t(x3 ^ x0 ^ x1 ^ r[2]);
        x3 ^= t(x0 ^ x1 ^ x2 ^ r[3]);
    }
    store([x0, x1, x2, x3], b);
}

/// Four blocks interleaved, each under its own round keys.
#[inline(always)]
fn four(rk: [&[u32; 32]; 4], b: &mut [[u8; 16]]) {
    let mut x: [[u32; 4]; 4] = [[0; 4]; 4];
    for (xi, bi) in x.iter_mut().zip(b.iter()) {
        *xi = load(bi);
    }
    for r in (0..32).step_by(4) {
        for l in 0..4 {
            x[l][0] ^= t(x[l][1] ^ x[l][2] ^ x[l][3] ^ rk[l][r]);
        }
        for l in 0..4 {
            x[l][1] ^= t(x[l][2] ^ x[l][3] ^ x[l][0] ^ rk[l][r + 1]);
        }
        for l in 0..4 {
            x[l][2] ^= t(x[l][3] ^ x[l][0] ^ x[l][1] ^ rk[l][r + 2]);
        }
        for l in 0..4 {
            x[l][3] ^= t(x[l][0] ^ x[l][1] ^ x[l][2] ^ rk[l][r + 3]);
        }
    }
    for (xi, bi) in x.iter().zip(b.iter_mut()) {
        store(*xi, bi);
    }
}

/// Any number of blocks under one key.
pub(super) fn blocks(rk: &[u32; 32], blocks: &mut [[u8; 16]]) {
    let (quads, rest) = blocks.as_chunks_mut::<4>();
    for q in quads {
        four([rk; 4], q);
    }
    for b in rest {
        block(rk, b);
    }
}

/// Block i under `rks[i]`.
pub(super) fn blocks_keyed(rks: &[[u32; 32]], blocks: &mut [[u8; 16]]) {
    let mut i = 0;
    while i + 4 <= blocks.len() {
        four(
            [&rks[i], &rks[i + 1], &rks[i + 2], &rks[i + 3]],
            &mut blocks[i..i + 4],
        );
        i += 4;
    }
    while i < blocks.len() {
        block(&rks[i], &mut blocks[i]);
        i += 1;
    }
}
