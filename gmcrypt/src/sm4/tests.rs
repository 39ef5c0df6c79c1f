use super::*;
use libsm::sm4::cipher::Sm4Cipher;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            *x = self.next() as u8;
        }
    }
    fn key(&mut self) -> [u8; 16] {
        let mut k = [0u8; 16];
        self.fill(&mut k);
        k
    }
}

/// The implementations this CPU runs; the others are printed as skipped.
fn runnable() -> Vec<Impl> {
    Impl::ALL
        .into_iter()
        .filter(|i| match i.unavailable() {
            None => true,
            Some(why) => {
                println!("skipped: SM4 {i}: {why}");
                false
            }
        })
        .collect()
}

const K: [u8; 16] = [
    0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10,
];
const C1: [u8; 16] = [
    0x68, 0x1e, 0xdf, 0x34, 0xd2, 0x06, 0x96, 0x5e, 0x86, 0xb3, 0xe9, 0x4f, 0x53, 0x6e, 0x42, 0x46,
];

// ---- the constants

fn gmul(mut a: u32, mut b: u32, poly: u32) -> u32 {
    let mut r = 0;
    while b != 0 {
        if b & 1 != 0 {
            r ^= a;
        }
        b >>= 1;
        a <<= 1;
        if a & 0x100 != 0 {
            a ^= poly;
        }
    }
    r
}
fn ginv(a: u32, poly: u32) -> u32 {
    (0..256).find(|&b| gmul(a, b, poly) == 1).unwrap_or(0)
}
fn apply(rows: &[u8; 8], x: u8) -> u8 {
    (0..8).fold(0, |acc, i| {
        acc | ((((rows[i] & x).count_ones() & 1) as u8) << i)
    })
}
fn aes_sbox(x: u8) -> u8 {
    let i = ginv(x as u32, 0x11b) as u8;
    i ^ i.rotate_left(1) ^ i.rotate_left(2) ^ i.rotate_left(3) ^ i.rotate_left(4) ^ 0x63
}

#[test]
fn affine_constants_give_the_sbox() {
    for x in 0..=255u8 {
        // GFNI: affine, then affine(inverse in AES's field).
        let y = apply(&PRE_ROWS, x) ^ PRE_CONST;
        let z = apply(&POST_ROWS, ginv(y as u32, 0x11b) as u8) ^ POST_CONST;
        assert_eq!(z, SBOX[x as usize], "gfni form at {x:#x}");
        // AES-NI: nibble tables around the AES S-box.
        let y = AESNI_PRE_LO[(x & 15) as usize] ^ AESNI_PRE_HI[(x >> 4) as usize];
        let s = aes_sbox(y);
        let z = AESNI_POST_LO[(s & 15) as usize] ^ AESNI_POST_HI[(s >> 4) as usize];
        assert_eq!(z, SBOX[x as usize], "aes-ni form at {x:#x}");
    }
    assert_eq!(gfni_matrix(PRE_ROWS), 0x4c287db91a22505d);
}

#[test]
fn derive_the_isomorphism() {
    // S(x) = A·inv_0x1F5(A·x ^ 0xD3) ^ 0xD3, A circulant of 0xA7.
    let a: [u8; 8] = std::array::from_fn(|i| 0xa7u8.rotate_left(i as u32));
    for x in 0..=255u8 {
        let i = ginv((apply(&a, x) ^ 0xd3) as u32, 0x1f5) as u8;
        assert_eq!(apply(&a, i) ^ 0xd3, SBOX[x as usize]);
    }
    // β = the first root of 0x1F5 in AES's field; T maps x^i to β^i.
    let pow = |b: u32, n: u32| (0..n).fold(1, |r, _| gmul(r, b, 0x11b));
    let beta = (2..256u32)
        .find(|&b| {
            (0..9)
                .filter(|i| 0x1f5 >> i & 1 == 1)
                .fold(0, |v, i| v ^ pow(b, i))
                == 0
        })
        .unwrap();
    assert_eq!(beta, 0x23);
    let t = |x: u8| {
        (0..8)
            .filter(|i| x >> i & 1 == 1)
            .fold(0u8, |v, i| v ^ pow(beta, i) as u8)
    };
    let rows_of = |f: &dyn Fn(u8) -> u8| -> [u8; 8] {
        std::array::from_fn(|i| (0..8).fold(0u8, |r, j| r | (((f(1 << j) >> i) & 1) << j)))
    };
    let mut t_inv = [0u8; 256];
    for x in 0..=255u8 {
        t_inv[t(x) as usize] = x;
    }
    let pre = rows_of(&|x| t(apply(&a, x)));
    let post = rows_of(&|x| apply(&a, t_inv[x as usize]));
    assert_eq!(pre, PRE_ROWS);
    assert_eq!(t(0xd3), PRE_CONST);
    assert_eq!(post, POST_ROWS);
}

#[test]
fn key_schedule_matches_the_standard_example() {
    // GB/T 32907 appendix A: rk_0 and rk_31 of the example key.
    let rk = expand_key(&K);
    assert_eq!(rk[0], 0xf12186f9);
    assert_eq!(rk[31], 0x9124a012);
}

// ---- every implementation against libsm and the standard

#[test]
fn gbt32907_example_1_every_impl() {
    for imp in runnable() {
        let c = Sm4::with_impl(&K, imp).unwrap();
        for n in [1usize, 3, 8, 16, 17] {
            let mut b = vec![K; n];
            c.encrypt_blocks(&mut b);
            assert!(b.iter().all(|x| *x == C1), "{imp} n={n}");
            c.decrypt_blocks(&mut b);
            assert!(b.iter().all(|x| *x == K), "{imp} n={n}");
        }
    }
}

#[test]
fn gbt32907_example_2_million_iterations() {
    let c = Sm4::with_impl(&K, Impl::Portable).unwrap();
    let mut b = K;
    for _ in 0..1_000_000 {
        c.encrypt_block(&mut b);
    }
    assert_eq!(
        b,
        [
            0x59, 0x52, 0x98, 0xc7, 0xc6, 0xfd, 0x27, 0x1f, 0x04, 0x02, 0xf8, 0x04, 0xc3, 0x3d,
            0x3f, 0x66
        ]
    );
}

#[test]
fn every_impl_agrees_with_libsm_on_random_blocks() {
    let mut rng = Rng(0x5eed_1234_abcd);
    for imp in runnable() {
        for n in 0..=40usize {
            let key = rng.key();
            let reference = Sm4Cipher::new(&key).unwrap();
            let c = Sm4::with_impl(&key, imp).unwrap();
            let mut blocks: Vec<[u8; 16]> = (0..n).map(|_| rng.key()).collect();
            let plain = blocks.clone();
            c.encrypt_blocks(&mut blocks);
            for (p, e) in plain.iter().zip(&blocks) {
                assert_eq!(reference.encrypt(p).unwrap(), *e, "{imp} n={n}");
            }
            c.decrypt_blocks(&mut blocks);
            assert_eq!(blocks, plain, "{imp} n={n}");
        }
    }
}

#[test]
fn keyed_lanes_use_each_blocks_key() {
    let mut rng = Rng(77);
    for imp in runnable() {
        for n in [1usize, 4, 7, 8, 9, 16, 17, 33] {
            let keys: Vec<Sm4> = (0..n)
                .map(|_| Sm4::with_impl(&rng.key(), imp).unwrap())
                .collect();
            let rks: Vec<[u32; 32]> = keys.iter().map(|k| k.enc).collect();
            let mut blocks: Vec<[u8; 16]> = (0..n).map(|_| rng.key()).collect();
            let mut want = blocks.clone();
            for (k, b) in keys.iter().zip(want.iter_mut()) {
                k.encrypt_block(b);
            }
            run_keyed(imp, &rks, &mut blocks);
            assert_eq!(blocks, want, "{imp} n={n}");
        }
    }
}

fn reference_ctr(key: &[u8; 16], iv: &[u8; 16], data: &mut [u8]) {
    let c = Sm4Cipher::new(key).unwrap();
    let mut ctr = u128::from_be_bytes(*iv);
    for chunk in data.chunks_mut(16) {
        let ks = c.encrypt(&ctr.to_be_bytes()).unwrap();
        for (d, k) in chunk.iter_mut().zip(ks) {
            *d ^= k;
        }
        ctr = ctr.wrapping_add(1);
    }
}

fn reference_ofb(key: &[u8; 16], iv: &[u8; 16], data: &mut [u8]) {
    let c = Sm4Cipher::new(key).unwrap();
    let mut ks = *iv;
    for chunk in data.chunks_mut(16) {
        ks = c.encrypt(&ks).unwrap();
        for (d, k) in chunk.iter_mut().zip(&ks) {
            *d ^= k;
        }
    }
}

#[test]
fn ctr_every_impl_every_length_and_counter_wrap() {
    let mut rng = Rng(99);
    for imp in runnable() {
        for len in [0usize, 1, 15, 16, 17, 100, 255, 256, 257, 1400, 4099] {
            let key = rng.key();
            let mut iv = rng.key();
            if len == 1400 {
                iv = [0xff; 16]; // the counter wraps to zero
                iv[0] = 0xff;
            }
            let mut data = vec![0u8; len];
            rng.fill(&mut data);
            let mut want = data.clone();
            reference_ctr(&key, &iv, &mut want);
            Sm4::with_impl(&key, imp).unwrap().ctr_apply(&iv, &mut data);
            assert_eq!(data, want, "{imp} len={len}");
        }
    }
}

#[test]
fn ofb_single_lanes_and_keyed_lanes_agree() {
    let mut rng = Rng(1234);
    for imp in runnable() {
        let key = rng.key();
        let c = Sm4::with_impl(&key, imp).unwrap();
        for lanes in [0usize, 1, 3, 4, 9, 16, 17, 40] {
            let lens: Vec<usize> = (0..lanes).map(|_| (rng.next() % 3000) as usize).collect();
            let ivs: Vec<[u8; 16]> = (0..lanes).map(|_| rng.key()).collect();
            let mut data: Vec<Vec<u8>> = lens
                .iter()
                .map(|&l| {
                    let mut v = vec![0; l];
                    rng.fill(&mut v);
                    v
                })
                .collect();
            let mut want = data.clone();
            for (w, iv) in want.iter_mut().zip(&ivs) {
                reference_ofb(&key, iv, w);
            }
            let mut single = data.clone();
            for (s, iv) in single.iter_mut().zip(&ivs) {
                c.ofb_apply(iv, s);
            }
            assert_eq!(single, want, "{imp} ofb_apply");
            let mut units: Vec<OfbUnit<'_>> = data
                .iter_mut()
                .zip(&ivs)
                .map(|(d, iv)| OfbUnit { iv: *iv, data: d })
                .collect();
            c.ofb_lanes(&mut units);
            assert_eq!(data, want, "{imp} ofb_lanes lanes={lanes}");
        }
        // Several keys, one per unit.
        let n = 21;
        let keys: Vec<[u8; 16]> = (0..n).map(|_| rng.key()).collect();
        let ciphers: Vec<Sm4> = keys
            .iter()
            .map(|k| Sm4::with_impl(k, imp).unwrap())
            .collect();
        let refs: Vec<&Sm4> = ciphers.iter().collect();
        let ivs: Vec<[u8; 16]> = (0..n).map(|_| rng.key()).collect();
        let mut data: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let mut v = vec![0; 37 * i];
                rng.fill(&mut v);
                v
            })
            .collect();
        let mut want = data.clone();
        for i in 0..n {
            reference_ofb(&keys[i], &ivs[i], &mut want[i]);
        }
        let mut units: Vec<OfbUnit<'_>> = data
            .iter_mut()
            .zip(&ivs)
            .map(|(d, iv)| OfbUnit { iv: *iv, data: d })
            .collect();
        ofb_lanes_keyed(&refs, &mut units);
        assert_eq!(data, want, "{imp} ofb_lanes_keyed");
    }
}

#[test]
fn selection_by_name() {
    assert_eq!(select(None).imp, Impl::best());
    assert_eq!(select(None).reason, "detected");
    let p = select(Some("portable"));
    assert_eq!(
        (p.imp, p.reason.as_str()),
        (Impl::Portable, "GMCRYPT_SM4=portable")
    );
    let bad = select(Some("nope"));
    assert_eq!(bad.imp, Impl::best());
    assert!(
        bad.reason.contains("no such implementation"),
        "{}",
        bad.reason
    );
    for i in Impl::ALL {
        assert_eq!(Impl::from_name(i.name()), Some(i));
        let s = select(Some(i.name()));
        match i.unavailable() {
            None => assert_eq!(s.imp, i),
            Some(why) => {
                assert_eq!(s.imp, Impl::best());
                assert!(s.reason.contains(why));
                assert!(Sm4::with_impl(&K, i).is_err());
            }
        }
    }
    assert!(Impl::best().width() >= 4);
    let dbg = format!("{:?}", Sm4::new(&K));
    assert!(!dbg.contains("0123") && !dbg.contains("f12186f9"), "{dbg}");
}
