use super::*;

/// Deterministic xorshift64* PRNG for test data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// MSB-first bit writer producing an RBSP (with stop bit) for synthetic headers.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    cur: u8,
    n: u32,
}
impl Bits {
    fn bit(&mut self, b: u32) -> &mut Self {
        self.cur = (self.cur << 1) | (b as u8 & 1);
        self.n += 1;
        if self.n == 8 {
            self.out.push(self.cur);
            self.cur = 0;
            self.n = 0;
        }
        self
    }
    fn bits(&mut self, v: u32, n: u32) -> &mut Self {
        for i in (0..n).rev() {
            self.bit((v >> i) & 1);
        }
        self
    }
    fn ue(&mut self, v: u32) -> &mut Self {
        let x = u64::from(v) + 1;
        let len = 64 - x.leading_zeros();
        for _ in 0..len - 1 {
            self.bit(0);
        }
        for i in (0..len).rev() {
            self.bit(((x >> i) & 1) as u32);
        }
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        for &x in b {
            self.bits(u32::from(x), 8);
        }
        self
    }
    /// rbsp_trailing_bits
    fn finish(&mut self) -> Vec<u8> {
        self.bit(1);
        while self.n != 0 {
            self.bit(0);
        }
        std::mem::take(&mut self.out)
    }
}

fn nal(header: &[u8], rbsp: &[u8]) -> Vec<u8> {
    let mut v = header.to_vec();
    escape_into(rbsp, &mut v);
    v
}

fn unescape(p: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    unescape_into(p, &mut v);
    v
}

fn has_forbidden(payload: &[u8]) -> bool {
    payload
        .windows(3)
        .any(|w| w[0] == 0 && w[1] == 0 && w[2] <= 2)
        || payload.last() == Some(&0)
}

#[test]
fn escape_examples() {
    let cases: &[(&[u8], &[u8])] = &[
        (&[0, 0, 0], &[0, 0, 3, 0]),
        (&[0, 0, 1], &[0, 0, 3, 1]),
        (&[0, 0, 2], &[0, 0, 3, 2]),
        (&[0, 0, 3], &[0, 0, 3, 3]),
        (&[0, 0, 4], &[0, 0, 4]),
        (&[0, 0], &[0, 0, 3]),
        (&[0, 0, 0, 0], &[0, 0, 3, 0, 0, 3]),
        (&[0, 0, 0, 0, 0, 0], &[0, 0, 3, 0, 0, 3, 0, 0, 3]),
        (&[1, 0, 0, 3, 0, 0, 1], &[1, 0, 0, 3, 3, 0, 0, 3, 1]),
        (&[], &[]),
    ];
    for (rbsp, esc) in cases {
        let mut v = Vec::new();
        escape_into(rbsp, &mut v);
        assert_eq!(&v[..], *esc, "escape {rbsp:02x?}");
        assert_eq!(unescape(esc), *rbsp, "unescape {esc:02x?}");
        assert_eq!(rbsp_len(esc), rbsp.len());
    }
}

#[test]
fn escape_round_trips_random() {
    let mut rng = Rng(7);
    for _ in 0..2000 {
        let n = (rng.next() % 40) as usize;
        // lots of zeros and small values
        let rbsp: Vec<u8> = (0..n).map(|_| (rng.next() % 5) as u8).collect();
        let mut e = Vec::new();
        escape_into(&rbsp, &mut e);
        assert!(
            !e.windows(3).any(|w| w[0] == 0 && w[1] == 0 && w[2] <= 2),
            "{e:02x?}"
        );
        assert_eq!(unescape(&e), rbsp);
    }
}

#[test]
fn fast_scans_agree_with_the_stateful_definitions() {
    let mut rng = Rng(31);
    for _ in 0..20000 {
        let n = (rng.next() % 24) as usize;
        let p: Vec<u8> = (0..n)
            .map(|_| match rng.next() % 3 {
                0 => 0,
                1 => 3,
                _ => (rng.next() % 5) as u8,
            })
            .collect();
        // unescape by next_ep runs == stateful unescape
        let mut runs = Vec::new();
        let (mut last, mut from) = (0, 0);
        while let Some(e) = next_ep(&p, from) {
            runs.extend_from_slice(&p[last..e]);
            last = e + 1;
            from = e + 1;
        }
        runs.extend_from_slice(&p[last..]);
        assert_eq!(runs, unescape(&p), "{p:02x?}");
        // needs_escape == escaping changes something
        let mut e = Vec::new();
        escape_into(&p, &mut e);
        assert_eq!(needs_escape(&p), e != p, "{p:02x?}");
    }
}

#[test]
fn crypt_payload_matches_the_definition() {
    let c = Sm4::new(&[0x11; 16]);
    let mut rng = Rng(99);
    for n in [0usize, 1, 2, 3, 15, 16, 17, 31, 32, 33, 100, 1000] {
        for _ in 0..20 {
            let rbsp: Vec<u8> = (0..n)
                .map(|_| {
                    if rng.next().is_multiple_of(3) {
                        0
                    } else {
                        rng.next() as u8
                    }
                })
                .collect();
            let mut payload = Vec::new();
            escape_into(&rbsp, &mut payload);
            let iv: [u8; 16] = rng.bytes(16).try_into().unwrap();
            let mut got = Vec::new();
            crypt_payload(&payload, &c, &iv, &mut got);
            // definition: unescape, OFB over [0, len-1), escape
            let mut want_rbsp = rbsp.clone();
            if want_rbsp.len() >= 2 {
                let l = want_rbsp.len() - 1;
                crate::sm4::ofb_apply(&c, &iv, &mut want_rbsp[..l]);
            }
            let mut want = Vec::new();
            if rbsp.len() >= 2 {
                escape_into(&want_rbsp, &mut want);
            } else {
                want = payload.clone();
            }
            assert_eq!(got, want);
            if rbsp.len() >= 2 {
                assert_eq!(got.last(), want.last());
            }
            // and back
            let mut back = Vec::new();
            crypt_payload(&got, &c, &iv, &mut back);
            if rbsp.last() != Some(&0) {
                assert_eq!(back, payload, "n={n}");
            }
        }
    }
}

#[test]
fn short_nal_units_are_copied() {
    let c = Sm4::new(&[1; 16]);
    let iv = [0u8; 16];
    for (codec, n) in [
        (NalCodec::H264, &[0x65u8][..]),
        (NalCodec::H264, &[0x65, 0x80][..]),
        (NalCodec::H264, &[0x65, 0x00, 0x00, 0x03][..]), // RBSP of 2 bytes: 00 00
        (NalCodec::H265, &[0x26][..]),
        (NalCodec::H265, &[0x26, 0x01, 0x80][..]),
        (NalCodec::H265, &[][..]),
    ] {
        let mut out = vec![0xaa];
        crypt_nal(codec, n, &c, &iv, &mut out);
        if rbsp_len(n.get(codec.header_len()..).unwrap_or_default()) < 2 {
            assert_eq!(&out[1..], n);
        }
        assert_eq!(out[0], 0xaa);
    }
}

#[test]
fn annexb_split() {
    // leading garbage, 4-byte and 3-byte start codes, trailing zeros, empty NAL
    let au = [
        0xee, 0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 0, 1, 0x65, 4, 5, 0, 0, 1, 0, 0,
        1, 0x41, 9, 0, 0,
    ];
    let mut units = Vec::new();
    let tail = split_annexb(&au, &mut units);
    let nals: Vec<&[u8]> = units.iter().map(|u| &au[u.nal_start..u.nal_end]).collect();
    assert_eq!(
        nals,
        vec![
            &[0x67, 1, 2][..],
            &[0x68, 3],
            &[0x65, 4, 5],
            &[],
            &[0x41, 9]
        ]
    );
    assert_eq!(units[0].gap_start, 0);
    assert_eq!(
        &au[units[2].gap_start..units[2].nal_start],
        &[0, 0, 0, 0, 1]
    );
    assert_eq!(&au[tail..], &[0, 0]);
    // gaps + nals + tail == au
    let mut re = Vec::new();
    for u in &units {
        re.extend_from_slice(&au[u.gap_start..u.nal_end]);
    }
    re.extend_from_slice(&au[tail..]);
    assert_eq!(re, au);
    // no start code at all
    assert_eq!(split_annexb(&[1, 2, 3, 0, 0], &mut units), 5);
    assert!(units.is_empty());
    assert_eq!(split_annexb(&[], &mut units), 0);
    assert_eq!(split_nal_units(&[0, 0, 1]), vec![&[][..]]);
}

fn params(kv: u32, iv: u8) -> SecurityParams {
    SecurityParams {
        encrypted: true,
        key_version: kv,
        iv_base: [iv; 16],
    }
}

#[test]
fn sei_round_trip_and_layout() {
    for codec in [NalCodec::H264, NalCodec::H265] {
        for p in [
            params(1, 0),
            params(0, 0xff),
            params(0xdead_beef, 0),
            SecurityParams {
                encrypted: false,
                key_version: 7,
                iv_base: [0; 16],
            },
        ] {
            let n = build_sei_nal(codec, &p);
            assert_eq!(parse_sei_nal(codec, &n), Ok(Some(p)));
            let h = codec.header_len();
            assert!(!has_forbidden(&n[h..]), "{n:02x?}");
            let r = unescape(&n[h..]);
            assert_eq!(r.len(), 43);
            assert_eq!(&r[..2], &[5, 40]);
            assert_eq!(&r[2..18], &SEI_UUID);
            assert_eq!(r[18], 1);
            assert_eq!(r[19], u8::from(p.encrypted));
            assert_eq!(&r[20..22], &[0, 0]);
            assert_eq!(&r[22..26], &p.key_version.to_be_bytes());
            assert_eq!(&r[26..42], &p.iv_base);
            assert_eq!(r[42], 0x80);
            // the other codec's parser does not see an SEI
            let other = if codec == NalCodec::H264 {
                NalCodec::H265
            } else {
                NalCodec::H264
            };
            assert_eq!(parse_sei_nal(other, &n), Ok(None));
        }
    }
    assert_eq!(&build_sei_nal(NalCodec::H264, &params(1, 1))[..1], &[0x06]);
    assert_eq!(
        &build_sei_nal(NalCodec::H265, &params(1, 1))[..2],
        &[0x4e, 0x01]
    );
    // key_version 1 = 00 00 00 01 after the reserved 00 00: needs emulation prevention
    let n = build_sei_nal(NalCodec::H264, &params(1, 1));
    assert!(n.windows(3).any(|w| w == [0, 0, 3]));
}

/// Builds an SEI NAL (H.264) from raw messages (type, payload) + trailing bits.
fn sei_with(messages: &[(usize, Vec<u8>)], trailing: bool) -> Vec<u8> {
    let mut r = Vec::new();
    for (t, p) in messages {
        let mut t = *t;
        while t >= 255 {
            r.push(0xff);
            t -= 255;
        }
        r.push(t as u8);
        let mut s = p.len();
        while s >= 255 {
            r.push(0xff);
            s -= 255;
        }
        r.push(s as u8);
        r.extend_from_slice(p);
    }
    if trailing {
        r.push(0x80);
    }
    nal(&[0x06], &r)
}

fn body(version: u8, flags: u8, reserved: [u8; 2], kv: u32, iv: [u8; 16]) -> Vec<u8> {
    let mut b = SEI_UUID.to_vec();
    b.push(version);
    b.push(flags);
    b.extend_from_slice(&reserved);
    b.extend_from_slice(&kv.to_be_bytes());
    b.extend_from_slice(&iv);
    b
}

#[test]
fn sei_parsing_cases() {
    let c = NalCodec::H264;
    let good = body(1, 1, [0, 0], 5, [9; 16]);
    let foreign = {
        let mut b = vec![0x11; 16];
        b.extend_from_slice(b"x264 core");
        b
    };
    let want = Ok(Some(params(5, 9)));
    // ours alone, after a foreign one, before a foreign one, with a long payload type
    assert_eq!(
        parse_sei_nal(c, &sei_with(&[(5, good.clone())], true)),
        want
    );
    assert_eq!(
        parse_sei_nal(
            c,
            &sei_with(&[(5, foreign.clone()), (5, good.clone())], true)
        ),
        want
    );
    assert_eq!(
        parse_sei_nal(
            c,
            &sei_with(
                &[(300, vec![1; 300]), (5, good.clone()), (1, vec![2])],
                true
            )
        ),
        want
    );
    // no trailing bits: tolerated
    assert_eq!(
        parse_sei_nal(c, &sei_with(&[(5, good.clone())], false)),
        want
    );
    // foreign only, or not an SEI
    assert_eq!(
        parse_sei_nal(c, &sei_with(&[(5, foreign.clone())], true)),
        Ok(None)
    );
    assert_eq!(
        parse_sei_nal(c, &sei_with(&[(4, good.clone())], true)),
        Ok(None)
    );
    assert_eq!(parse_sei_nal(c, &[0x67, 1, 2]), Ok(None));
    assert_eq!(parse_sei_nal(c, &[]), Ok(None));
    assert_eq!(parse_sei_nal(c, &[0x06]), Ok(None));
    // a truncated foreign SEI is not ours
    let mut t = sei_with(&[(5, foreign.clone())], true);
    t.truncate(10);
    assert_eq!(parse_sei_nal(c, &t), Ok(None));
    // bad bodies of ours
    let m = Err(Failure::Malformed);
    assert_eq!(
        parse_sei_nal(c, &sei_with(&[(5, body(2, 1, [0, 0], 5, [9; 16]))], true)),
        m
    );
    assert_eq!(
        parse_sei_nal(c, &sei_with(&[(5, body(0, 1, [0, 0], 5, [9; 16]))], true)),
        m
    );
    assert_eq!(
        parse_sei_nal(c, &sei_with(&[(5, body(1, 3, [0, 0], 5, [9; 16]))], true)),
        m
    );
    assert_eq!(
        parse_sei_nal(c, &sei_with(&[(5, body(1, 1, [0, 1], 5, [9; 16]))], true)),
        m
    );
    assert_eq!(
        parse_sei_nal(c, &sei_with(&[(5, good[..39].to_vec())], true)),
        m
    );
    assert_eq!(
        parse_sei_nal(c, &sei_with(&[(5, [&good[..], &[0]].concat())], true)),
        m
    );
    assert_eq!(
        parse_sei_nal(c, &sei_with(&[(5, good[..16].to_vec())], true)),
        m
    );
    assert_eq!(
        parse_sei_nal(c, &sei_with(&[(5, good[..8].to_vec())], true)),
        m
    );
    // two of ours
    assert_eq!(
        parse_sei_nal(c, &sei_with(&[(5, good.clone()), (5, good.clone())], true)),
        m
    );
    // truncations of our SEI at every length
    let full = sei_with(&[(5, good.clone())], true);
    for len in 4..full.len() - 1 {
        assert_eq!(parse_sei_nal(c, &full[..len]), m, "len {len}");
    }
    // a truncated message after ours
    let mut after = sei_with(&[(5, good.clone()), (5, foreign.clone())], true);
    after.truncate(after.len() - 5);
    assert_eq!(parse_sei_nal(c, &after), m);
}

#[test]
fn bit_reader_and_ue() {
    let mut b = Bits::default();
    for v in [0u32, 1, 2, 3, 7, 8, 254, 255, 1000, 65535] {
        b.ue(v);
    }
    let rbsp = b.finish();
    let mut esc = Vec::new();
    escape_into(&rbsp, &mut esc);
    let mut r = BitReader::new(&esc);
    for v in [0u32, 1, 2, 3, 7, 8, 254, 255, 1000, 65535] {
        assert_eq!(r.ue(), Some(v));
    }
    // EP bytes are skipped: 00 00 03 01 reads as 00 00 01
    let mut r = BitReader::new(&[0, 0, 3, 1]);
    assert_eq!(r.bits(24), Some(1));
    assert_eq!(r.bit(), None);
    // 32+ leading zeros: invalid
    let mut r = BitReader::new(&[0, 0, 0, 0, 0xff]);
    assert_eq!(r.ue(), None);
    assert_eq!(BitReader::new(&[]).ue(), None);
    // largest valid: 31 zeros
    let mut r = BitReader::new(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(r.ue(), Some(u32::MAX - 1));
}

/// H.264 slice NAL unit with the given header fields and some body.
fn h264_slice(nal_type: u8, first_mb: u32, slice_type: u32, pps: u32, body: &[u8]) -> Vec<u8> {
    let rbsp = Bits::default()
        .ue(first_mb)
        .ue(slice_type)
        .ue(pps)
        .bytes(body)
        .finish();
    nal(&[0x60 | nal_type], &rbsp)
}

fn h265_slice(
    nal_type: u8,
    first: u32,
    pps: u32,
    extra_bits: u32,
    slice_type: u32,
    body: &[u8],
) -> Vec<u8> {
    let mut b = Bits::default();
    b.bit(first);
    if (16..=23).contains(&nal_type) {
        b.bit(0);
    }
    b.ue(pps);
    if first == 1 {
        b.bits(0, extra_bits).ue(slice_type);
    }
    b.bytes(body);
    let rbsp = b.finish();
    nal(&[nal_type << 1, 1], &rbsp)
}

#[test]
fn slice_plausibility_h264() {
    let c = NalCodec::H264;
    let mut pps = PpsTable::new();
    let ok = |n: &[u8], first: bool, pps: &PpsTable| plausible_slice(c, n, first, pps);
    assert!(ok(&h264_slice(5, 0, 7, 0, &[1, 2]), true, &pps));
    assert!(ok(&h264_slice(5, 0, 2, 3, &[1, 2]), true, &pps)); // no PPS seen: any id
    assert!(!ok(&h264_slice(5, 0, 5, 0, &[1, 2]), true, &pps)); // IDR must be I/SI
    assert!(!ok(&h264_slice(1, 0, 10, 0, &[1]), true, &pps)); // slice_type > 9
    assert!(!ok(&h264_slice(1, 3, 0, 0, &[1]), true, &pps)); // first slice at MB 3
    assert!(ok(&h264_slice(1, 3, 0, 0, &[1]), false, &pps)); // fine for a later slice
    assert!(!ok(&h264_slice(1, 0, 0, 256, &[1]), true, &pps));
    pps.record(c, &nal(&[0x68], &Bits::default().ue(3).ue(0).finish()));
    assert!(!ok(&h264_slice(1, 0, 0, 0, &[1]), true, &pps)); // unseen PPS 0
    assert!(ok(&h264_slice(1, 0, 0, 3, &[1]), true, &pps));
    assert!(!ok(&[0x65, 0, 0, 0, 0], true, &pps)); // ue runs out / too long
    assert!(!ok(&[0x65], true, &pps));
    assert!(!ok(&[], true, &pps));
}

#[test]
fn slice_plausibility_h265() {
    let c = NalCodec::H265;
    let mut pps = PpsTable::new();
    let ok = |n: &[u8], first: bool, pps: &PpsTable| plausible_slice(c, n, first, pps);
    // no PPS seen: only the flag and the id range are checked
    assert!(ok(&h265_slice(19, 1, 0, 0, 2, &[5]), true, &pps));
    assert!(ok(&h265_slice(1, 1, 0, 0, 1, &[5]), true, &pps));
    assert!(!ok(&h265_slice(1, 0, 0, 0, 1, &[5]), true, &pps));
    assert!(ok(&h265_slice(1, 0, 0, 0, 1, &[5]), false, &pps));
    assert!(!ok(&h265_slice(1, 1, 64, 0, 1, &[5]), true, &pps));
    // PPS 2 with 2 extra slice header bits
    let p = Bits::default()
        .ue(2)
        .ue(0)
        .bit(0)
        .bit(0)
        .bits(2, 3)
        .bytes(&[0xab])
        .finish();
    pps.record(c, &nal(&[34 << 1, 1], &p));
    assert_eq!(pps.lookup(2), Some(Some(0x82)));
    assert!(ok(&h265_slice(19, 1, 2, 2, 2, &[5]), true, &pps));
    assert!(!ok(&h265_slice(19, 1, 2, 2, 1, &[5]), true, &pps)); // IRAP must be I
    assert!(!ok(&h265_slice(1, 1, 2, 2, 3, &[5]), true, &pps)); // slice_type > 2
    assert!(!ok(&h265_slice(1, 1, 0, 0, 1, &[5]), true, &pps)); // PPS 0 unseen
    assert!(ok(&h265_slice(1, 1, 2, 2, 0, &[5]), true, &pps));
}

/// A synthetic H.264 access unit: optional SPS/PPS/foreign SEI, `slices` slices.
fn h264_au(idx: usize, slices: usize, rng: &mut Rng) -> Vec<u8> {
    let mut au = Vec::new();
    if idx.is_multiple_of(5) {
        au.extend_from_slice(&[0, 0, 0, 1, 0x09, 0xf0]); // AUD
        au.extend_from_slice(&[0, 0, 0, 1, 0x67, 0x42, 0, 0x1e, 0x95, 0xa8]); // SPS
        au.extend_from_slice(&[0, 0, 1]);
        au.extend_from_slice(&nal(&[0x68], &Bits::default().ue(0).ue(0).bit(1).finish()));
        au.extend_from_slice(&[0, 0, 1]);
        au.extend_from_slice(&sei_with(&[(5, vec![0x22; 20])], true));
    }
    for s in 0..slices {
        au.extend_from_slice(if s.is_multiple_of(2) {
            &[0, 0, 0, 1][..]
        } else {
            &[0, 0, 1][..]
        });
        let n = 20 + (rng.next() % 300) as usize;
        let body: Vec<u8> = (0..n)
            .map(|_| {
                if rng.next().is_multiple_of(4) {
                    0
                } else {
                    rng.next() as u8
                }
            })
            .collect();
        let (t, st) = if idx.is_multiple_of(5) {
            (5, 7)
        } else {
            (1, 5)
        };
        au.extend_from_slice(&h264_slice(t, (s * 10) as u32, st, 0, &body));
    }
    au
}

fn ring(kv: u32, id: u64, key: u8) -> KeyRing {
    let mut r = KeyRing::new();
    r.insert(kv, id, &[key; 16]);
    r
}

#[test]
fn decryptor_round_trip_and_holding() {
    let mut rng = Rng(5);
    let c = Sm4::new(&[0x42; 16]);
    let keys = ring(3, 100, 0x42);
    let mut d = NalDecryptor::new(NalCodec::H264);
    let mut out = Vec::new();
    let mut originals = Vec::new();
    for i in 0..12 {
        let au = h264_au(i, 1 + i % 3, &mut rng);
        let iv: [u8; 16] = rng.bytes(16).try_into().unwrap();
        let enc = encrypt_access_unit(NalCodec::H264, &au, 3, &c, &iv);
        assert_ne!(enc, au);
        d.push(enc, i.is_multiple_of(5), i, &keys, &mut out);
        originals.push(au);
        if i < 3 {
            assert!(out.is_empty(), "held while the key is unverified");
            assert_eq!(d.held(), i + 1);
        }
        if i == 3 {
            assert_eq!(out.len(), 4, "released after 4 plausible AUs");
        }
    }
    d.finish(&mut out);
    assert_eq!(out.len(), 12);
    for (i, (au, tag)) in out.iter().enumerate() {
        assert_eq!(*tag, i);
        assert_eq!(au, &originals[i], "AU {i}");
    }
    let s = d.stats();
    assert_eq!(s.encrypted_aus, 12);
    assert_eq!(s.decrypted_units, 24, "VCL NAL units: 4 x (1 + 2 + 3)");
    assert_eq!(s.failures, [0; 6]);
    assert_eq!(s.key_version, Some(3));
}

#[test]
fn decryptor_wrong_key_latches_and_new_id_recovers() {
    let mut rng = Rng(11);
    let c = Sm4::new(&[0x42; 16]);
    let wrong = ring(3, 1, 0x43);
    let right = ring(3, 2, 0x42);
    let mut d = NalDecryptor::new(NalCodec::H264);
    let mut out = Vec::new();
    let mut aus = Vec::new();
    for i in 0..30 {
        let au = h264_au(i, 1, &mut rng);
        let iv: [u8; 16] = rng.bytes(16).try_into().unwrap();
        aus.push((
            au.clone(),
            encrypt_access_unit(NalCodec::H264, &au, 3, &c, &iv),
        ));
    }
    for (i, (_, enc)) in aus.iter().enumerate().take(15) {
        d.push(enc.clone(), false, i, &wrong, &mut out);
    }
    d.finish(&mut out);
    assert!(out.is_empty(), "nothing emitted under a wrong key");
    assert_eq!(d.stats().failures_of(Failure::WrongKey), 15);
    assert_eq!(d.stats().last_failure, Some(Failure::WrongKey));
    // the key is replaced (new id): decryption resumes
    for (i, (_, enc)) in aus.iter().enumerate().skip(15) {
        d.push(enc.clone(), false, i, &right, &mut out);
    }
    d.finish(&mut out);
    assert_eq!(out.len(), 15);
    for (au, i) in &out {
        assert_eq!(au, &aus[*i].0);
    }
}

#[test]
fn decryptor_failures_by_reason() {
    let mut rng = Rng(3);
    let c = Sm4::new(&[0x42; 16]);
    let keys = ring(3, 1, 0x42);
    let mut d = NalDecryptor::new(NalCodec::H264);
    let mut out = Vec::new();
    let au = h264_au(0, 2, &mut rng);
    let enc = encrypt_access_unit(NalCodec::H264, &au, 3, &c, &[1; 16]);
    let enc_v9 = encrypt_access_unit(NalCodec::H264, &au, 9, &c, &[1; 16]);
    d.push(enc.clone(), true, 0, &KeyRing::new(), &mut out);
    d.push(enc_v9, true, 1, &keys, &mut out);
    // SEI with version 2
    let bad = enc.clone();
    let sei = build_sei_nal(NalCodec::H264, &params(3, 1));
    let pos = bad.windows(sei.len()).position(|w| w == &sei[..]).unwrap();
    let mut v2 = bad.clone();
    let mut r = unescape(&sei[1..]);
    r[18] = 2;
    let sei2 = nal(&[6], &r);
    v2.splice(pos..pos + sei.len(), sei2);
    d.push(v2, true, 2, &keys, &mut out);
    // truncated SEI
    let mut tr = bad.clone();
    tr.splice(pos + 20..pos + sei.len(), []);
    d.push(tr, true, 3, &keys, &mut out);
    // a second SEI after the first VCL NAL
    let mut twice = enc.clone();
    twice.extend_from_slice(&[0, 0, 1]);
    twice.extend_from_slice(&sei);
    d.push(twice, true, 4, &keys, &mut out);
    assert!(out.is_empty());
    let s = d.stats();
    assert_eq!(s.failures_of(Failure::NoKey), 1);
    assert_eq!(s.failures_of(Failure::UnknownKeyVersion), 1);
    assert_eq!(s.failures_of(Failure::Malformed), 3);
    assert_eq!(s.failures.iter().sum::<u64>(), 5);
    // then the good one decrypts
    d.push(enc, true, 5, &keys, &mut out);
    d.finish(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, au);
}

#[test]
fn clear_aus_pass_and_keep_order_while_holding() {
    let mut rng = Rng(8);
    let c = Sm4::new(&[0x42; 16]);
    let keys = ring(3, 1, 0x42);
    let mut d = NalDecryptor::new(NalCodec::H264);
    let mut out = Vec::new();
    let clear0 = h264_au(0, 1, &mut rng);
    d.push(clear0.clone(), true, 0, &keys, &mut out);
    assert_eq!(out.len(), 1, "clear AU passes at once");
    assert_eq!(out[0].0, clear0);
    let a1 = h264_au(1, 1, &mut rng);
    d.push(
        encrypt_access_unit(NalCodec::H264, &a1, 3, &c, &[2; 16]),
        false,
        1,
        &keys,
        &mut out,
    );
    let clear2 = h264_au(2, 1, &mut rng);
    d.push(clear2.clone(), false, 2, &keys, &mut out);
    assert_eq!(out.len(), 1, "clear AU held behind an unverified one");
    // a clear-flagged SEI is stripped
    let a3 = h264_au(3, 1, &mut rng);
    let mut flagged = vec![0, 0, 0, 1];
    flagged.extend_from_slice(&build_sei_nal(
        NalCodec::H264,
        &SecurityParams {
            encrypted: false,
            key_version: 0,
            iv_base: [0; 16],
        },
    ));
    flagged.extend_from_slice(&a3);
    d.push(flagged, false, 3, &keys, &mut out);
    d.finish(&mut out);
    let tags: Vec<usize> = out.iter().map(|(_, t)| *t).collect();
    assert_eq!(tags, [0, 1, 2, 3]);
    assert_eq!(out[1].0, a1);
    assert_eq!(out[2].0, clear2);
    assert_eq!(out[3].0, a3);
    assert_eq!(d.stats().clear_aus, 3);
    assert_eq!(d.stats().decrypted_units, 1);
}

#[test]
fn full_queue_is_released_when_all_passed() {
    let mut rng = Rng(12);
    let c1 = Sm4::new(&[1; 16]);
    let c2 = Sm4::new(&[2; 16]);
    let mut keys = KeyRing::new();
    keys.insert(1, 10, &[1; 16]);
    keys.insert(2, 20, &[2; 16]);
    let mut d = NalDecryptor::new(NalCodec::H264);
    let mut out = Vec::new();
    // alternate two unverified keys: key 1 gets Good at its 4th AU, but the
    // queue front after AU 0 is key 2's, still unverified
    for i in 0..7 {
        let au = h264_au(i + 1, 1, &mut rng);
        let (v, c) = if i.is_multiple_of(2) {
            (1, &c1)
        } else {
            (2, &c2)
        };
        d.push(
            encrypt_access_unit(NalCodec::H264, &au, v, c, &[i as u8; 16]),
            false,
            i,
            &keys,
            &mut out,
        );
    }
    assert_eq!(out.len(), 1);
    assert_eq!(d.held(), 6);
    let au = h264_au(8, 1, &mut rng);
    d.push(
        encrypt_access_unit(NalCodec::H264, &au, 2, &c2, &[7; 16]),
        false,
        7,
        &keys,
        &mut out,
    );
    assert_eq!(out.len(), 8, "key 2 verified too: everything released");
    assert_eq!(d.held(), 0);

    // one unverified AU, then clear AUs: the queue fills (8) and is released
    // because every held AU passed
    let mut keys3 = KeyRing::new();
    keys3.insert(3, 30, &[3; 16]);
    let c3 = Sm4::new(&[3; 16]);
    let au = h264_au(1, 1, &mut rng);
    d.push(
        encrypt_access_unit(NalCodec::H264, &au, 3, &c3, &[9; 16]),
        false,
        8,
        &keys3,
        &mut out,
    );
    for i in 9..16 {
        d.push(h264_au(1, 1, &mut rng), false, i, &keys3, &mut out);
    }
    assert_eq!(out.len(), 8);
    assert_eq!(d.held(), HOLD_MAX);
    d.push(h264_au(1, 1, &mut rng), false, 16, &keys3, &mut out);
    assert_eq!(out.len(), 17);
    assert_eq!(d.held(), 0);
    // key 3 is Good now: its next AU passes at once
    d.push(
        encrypt_access_unit(NalCodec::H264, &au, 3, &c3, &[10; 16]),
        false,
        17,
        &keys3,
        &mut out,
    );
    assert_eq!(out.len(), 18);
    assert!(out.iter().enumerate().all(|(i, (_, t))| *t == i));
    assert_eq!(out[17].0, au);
}

#[test]
fn random_input_never_panics() {
    let mut rng = Rng(77);
    let keys = ring(1, 1, 1);
    for codec in [NalCodec::H264, NalCodec::H265] {
        let mut d = NalDecryptor::new(codec);
        let mut out = Vec::new();
        for i in 0..3000usize {
            let n = (rng.next() % 200) as usize;
            let mut b: Vec<u8> = (0..n)
                .map(|_| match rng.next() % 6 {
                    0 | 1 => 0,
                    2 => 1,
                    _ => rng.next() as u8,
                })
                .collect();
            if i.is_multiple_of(3) {
                let sei = build_sei_nal(codec, &params(1, i as u8));
                let at = (rng.next() as usize) % (b.len() + 1);
                let mut ins = vec![0, 0, 1];
                ins.extend_from_slice(&sei);
                b.splice(at..at, ins);
            }
            d.push(b.clone(), false, i, &keys, &mut out);
            let _ = parse_sei_nal(codec, &b);
            let _ = encrypt_access_unit(codec, &b, 1, &Sm4::new(&[1; 16]), &[0; 16]);
            let _ = split_access_units(codec, &b);
        }
        d.finish(&mut out);
    }
}
