use super::*;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn runnable() -> Vec<Impl> {
    Impl::ALL
        .into_iter()
        .filter(|i| match i.unavailable() {
            None => true,
            Some(why) => {
                println!("skipped: SM3 {i}: {why}");
                false
            }
        })
        .collect()
}

fn digest(imp: Impl, data: &[u8]) -> [u8; 32] {
    let mut h = Sm3::with_impl(imp);
    h.update(data);
    h.finalize()
}

#[test]
fn gbt32905_examples_every_impl() {
    for imp in runnable() {
        assert_eq!(
            hex(&digest(imp, b"abc")),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
        );
        assert_eq!(
            hex(&digest(imp, "abcd".repeat(16).as_bytes())),
            "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"
        );
    }
    assert_eq!(
        hex(&sm3(b"abc")),
        "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    );
}

#[test]
fn every_impl_agrees_with_libsm_in_pieces() {
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut data = vec![0u8; 3000];
    for b in &mut data {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    for imp in runnable() {
        for len in [0usize, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1404, 3000] {
            let want = libsm::sm3::hash::Sm3Hash::new(&data[..len]).get_hash();
            assert_eq!(digest(imp, &data[..len]), want, "{imp} len={len}");
            // The same bytes in uneven pieces.
            let mut h = Sm3::with_impl(imp);
            for piece in data[..len].chunks(1 + len % 37) {
                h.update(piece);
            }
            assert_eq!(h.finalize(), want, "{imp} len={len} in pieces");
        }
    }
}

#[test]
fn hmac_is_rfc2104() {
    for imp in runnable() {
        for key in [&b"key"[..], &[0xaau8; 100][..], &[][..], &[7u8; 64][..]] {
            let m = b"The quick brown fox jumps over the lazy dog";
            let mut k = [0u8; 64];
            if key.len() > 64 {
                k[..32].copy_from_slice(&sm3(key));
            } else {
                k[..key.len()].copy_from_slice(key);
            }
            let mut inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
            inner.extend_from_slice(m);
            let mut outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
            outer.extend_from_slice(&sm3(&inner));
            let want = sm3(&outer);
            let h = HmacSm3::with_impl(key, imp);
            assert_eq!(h.mac(&[m]), want, "{imp}");
            assert_eq!(h.mac(&[&m[..10], &m[10..], &[]]), want, "{imp}");
            assert_eq!(hmac_sm3(key, m), want);
        }
    }
    assert_ne!(hmac_sm3(b"a", b"m"), hmac_sm3(b"b", b"m"));
    assert_eq!(format!("{:?}", HmacSm3::new(b"secret")), "HmacSm3 { .. }");
}

#[test]
fn names() {
    for i in Impl::ALL {
        assert_eq!(Impl::from_name(i.name()), Some(i));
    }
    assert_eq!(Impl::from_name("x"), None);
    assert!(selected().imp.unavailable().is_none());
}

#[test]
fn many_messages_in_lanes_equal_one_at_a_time() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for imp in runnable() {
        for n in [0usize, 1, 2, 7, 8, 9, 16, 17, 40] {
            let data: Vec<Vec<u8>> = (0..n)
                .map(|_| (0..next() % 3000).map(|_| next() as u8).collect())
                .collect();
            let keys: Vec<HmacSm3> = (0..n)
                .map(|i| HmacSm3::with_impl(&[i as u8; 20], imp))
                .collect();
            let splits: Vec<[&[u8]; 2]> = data
                .iter()
                .map(|d| {
                    let (a, b) = d.split_at(d.len() / 3);
                    [a, b]
                })
                .collect();
            let msgs: Vec<&[&[u8]]> = splits.iter().map(|s| &s[..]).collect();
            // One key, several messages.
            let mut out = vec![[0u8; 32]; n];
            if let Some(k) = keys.first() {
                k.mac_many(&msgs, &mut out);
            }
            for (i, d) in data.iter().enumerate() {
                assert_eq!(out[i], keys[0].mac(&[d]), "{imp} n={n} i={i}");
            }
            // Several keys.
            let refs: Vec<&HmacSm3> = keys.iter().collect();
            let mut out = vec![[0u8; 32]; n];
            hmac_many(&refs, &msgs, &mut out);
            for (i, d) in data.iter().enumerate() {
                assert_eq!(out[i], keys[i].mac(&[d]), "{imp} keyed n={n} i={i}");
            }
            // Plain digests from fresh hashers and from hashers mid-block
            // (the latter go one at a time).
            let fresh: Vec<Sm3> = (0..n).map(|_| Sm3::with_impl(imp)).collect();
            let mut odd: Vec<Sm3> = (0..n).map(|_| Sm3::with_impl(imp)).collect();
            for h in odd.iter_mut().step_by(2) {
                h.update(b"xyz");
            }
            let starts: Vec<&Sm3> = fresh.iter().collect();
            let mut out = vec![[0u8; 32]; n];
            finish_many(&starts, &msgs, &mut out);
            for (i, d) in data.iter().enumerate() {
                assert_eq!(out[i], digest(imp, d), "{imp} digest n={n} i={i}");
            }
            let starts: Vec<&Sm3> = odd.iter().collect();
            finish_many(&starts, &msgs, &mut out);
            for (i, d) in data.iter().enumerate() {
                let mut h = odd[i].clone();
                h.update(d);
                assert_eq!(out[i], h.finalize(), "{imp} mid-block n={n} i={i}");
            }
        }
    }
}
