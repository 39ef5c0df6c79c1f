//! The simulated camera's media encryption (docs/media-encryption.md):
//! `sm4-nal-ofb` encrypts each access unit's VCL NAL units before PS
//! muxing, `srtp-sm4` protects each RTP packet. Keys rotate on a schedule
//! (by frame count), and `--wrong-key` encrypts with other key bytes under
//! the same version, as a misprovisioned device would.

use anyhow::{bail, Context as _, Result};
use gb35114::{
    nal::{self, NalCodec},
    sm4::Sm4,
    srtp::{MasterKey, SrtpSender},
};
use media::Codec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    #[value(name = "sm4-nal-ofb")]
    NalOfb,
    #[value(name = "srtp-sm4")]
    SrtpSm4,
}

#[derive(Debug, Clone)]
pub enum SimKey {
    Nal([u8; 16]),
    Srtp(MasterKey),
}

/// Encryption settings shared by all streams.
#[derive(Debug, Clone)]
pub struct Encryption {
    pub profile: Profile,
    /// (version, key) in the order they are used.
    pub keys: Vec<(u32, SimKey)>,
    /// Move to the next key after this many frames.
    pub rotate_every: Option<u64>,
    pub wrong_key: bool,
}

fn hex(what: &str, s: &str) -> Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{what}: hex digits expected");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("hex"))
        .collect()
}

/// `--key`: `VERSION:KEYHEX` (sm4-nal-ofb), `VERSION:KEYHEX:SALTHEX` or
/// `VERSION:inline:BASE64` (srtp-sm4).
pub fn parse_key(profile: Profile, s: &str) -> Result<(u32, SimKey)> {
    let (v, rest) = s
        .split_once(':')
        .with_context(|| format!("--key {s:?}: VERSION:KEY expected"))?;
    let version: u32 = v
        .parse()
        .with_context(|| format!("--key {s:?}: bad version"))?;
    let key16 = |h: &str| -> Result<[u8; 16]> {
        hex("key", h)?
            .try_into()
            .map_err(|_| anyhow::anyhow!("--key {s:?}: the key must be 16 bytes (32 hex digits)"))
    };
    let key = match profile {
        Profile::NalOfb => SimKey::Nal(key16(rest)?),
        Profile::SrtpSm4 => {
            if rest.starts_with("inline:") {
                SimKey::Srtp(
                    MasterKey::from_inline(rest)
                        .map_err(|e| anyhow::anyhow!("--key {s:?}: {e}"))?,
                )
            } else {
                let (k, salt) = rest.split_once(':').with_context(|| {
                    format!("--key {s:?}: srtp-sm4 keys are VERSION:KEYHEX:SALTHEX or VERSION:inline:BASE64")
                })?;
                let salt: [u8; 14] = hex("salt", salt)?
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("--key {s:?}: the salt must be 14 bytes"))?;
                SimKey::Srtp(MasterKey {
                    key: key16(k)?,
                    salt,
                })
            }
        }
    };
    Ok((version, key))
}

fn spoil(k: &[u8; 16]) -> [u8; 16] {
    let mut w = *k;
    for b in &mut w {
        *b ^= 0xA5;
    }
    w
}

enum Active {
    Nal {
        codec: NalCodec,
        keys: Vec<(u32, Sm4)>,
    },
    Srtp {
        keys: Vec<(u32, MasterKey)>,
        sender: Box<SrtpSender>,
    },
}

/// One stream's encryptor.
pub struct StreamEnc {
    active: Active,
    rotate_every: Option<u64>,
    current: usize,
    rng: u64,
    pub encrypted_frames: u64,
}

impl StreamEnc {
    /// `session_key`: the srtp-sm4 key agreed in SDP (offer or our answer),
    /// used when no `--key` was given.
    pub fn new(e: &Encryption, codec: Codec, session_key: Option<&MasterKey>) -> Result<StreamEnc> {
        let active = match e.profile {
            Profile::NalOfb => {
                let codec = match codec {
                    Codec::H264 => NalCodec::H264,
                    Codec::H265 => NalCodec::H265,
                    other => bail!("sm4-nal-ofb needs H.264 or H.265 media, not {other:?}"),
                };
                let keys = e
                    .keys
                    .iter()
                    .filter_map(|(v, k)| match k {
                        SimKey::Nal(k) => {
                            Some((*v, Sm4::new(&if e.wrong_key { spoil(k) } else { *k })))
                        }
                        SimKey::Srtp(_) => None,
                    })
                    .collect::<Vec<_>>();
                if keys.is_empty() {
                    bail!("sm4-nal-ofb needs --key VERSION:KEYHEX");
                }
                Active::Nal { codec, keys }
            }
            Profile::SrtpSm4 => {
                let mut keys: Vec<(u32, MasterKey)> = e
                    .keys
                    .iter()
                    .filter_map(|(v, k)| match k {
                        SimKey::Srtp(m) => Some((*v, m.clone())),
                        SimKey::Nal(_) => None,
                    })
                    .collect();
                if keys.is_empty() {
                    match session_key {
                        Some(k) => keys.push((1, k.clone())),
                        None => bail!("srtp-sm4 without --key needs a key offered in the INVITE"),
                    }
                }
                if e.wrong_key {
                    for (_, m) in &mut keys {
                        m.key = spoil(&m.key);
                    }
                }
                let sender = Box::new(SrtpSender::new(&keys[0].1));
                Active::Srtp { keys, sender }
            }
        };
        let mut seed = [0u8; 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
            .context("reading /dev/urandom")?;
        Ok(StreamEnc {
            active,
            rotate_every: e.rotate_every,
            current: 0,
            rng: u64::from_le_bytes(seed) | 1,
            encrypted_frames: 0,
        })
    }

    fn next_u64(&mut self) -> u64 {
        // xorshift64*: fresh IVs per access unit (a simulator, not a CSPRNG).
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn nkeys(&self) -> usize {
        match &self.active {
            Active::Nal { keys, .. } => keys.len(),
            Active::Srtp { keys, .. } => keys.len(),
        }
    }

    /// Before frame `n`: the key of the schedule.
    pub fn begin_frame(&mut self, n: u64) {
        let idx = match self.rotate_every {
            Some(r) if r > 0 => ((n / r) as usize).min(self.nkeys() - 1),
            _ => 0,
        };
        if idx != self.current {
            self.current = idx;
            if let Active::Srtp { keys, sender } = &mut self.active {
                sender.set_key(&keys[idx].1);
            }
        }
    }

    pub fn key_version(&self) -> u32 {
        match &self.active {
            Active::Nal { keys, .. } => keys[self.current].0,
            Active::Srtp { keys, .. } => keys[self.current].0,
        }
    }

    /// sm4-nal-ofb: the encrypted access unit (other profiles: unchanged).
    pub fn access_unit(&mut self, au: &[u8]) -> Option<Vec<u8>> {
        let mut iv = [0u8; 16];
        iv[..8].copy_from_slice(&self.next_u64().to_be_bytes());
        iv[8..].copy_from_slice(&self.next_u64().to_be_bytes());
        let Active::Nal { codec, keys } = &self.active else {
            return None;
        };
        let (v, c) = &keys[self.current];
        self.encrypted_frames += 1;
        Some(nal::encrypt_access_unit(*codec, au, *v, c, &iv))
    }

    /// srtp-sm4: the SRTP packet of an RTP packet (other profiles:
    /// unchanged).
    pub fn packet(&mut self, rtp: Vec<u8>) -> Vec<u8> {
        let Active::Srtp { sender, .. } = &mut self.active else {
            return rtp;
        };
        let mut out = Vec::with_capacity(rtp.len() + 10);
        match sender.protect(&rtp, &mut out) {
            Ok(()) => out,
            Err(_) => rtp,
        }
    }

    pub fn is_srtp(&self) -> bool {
        matches!(self.active, Active::Srtp { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_arguments() {
        let (v, k) = parse_key(Profile::NalOfb, "3:0123456789abcdeffedcba9876543210").unwrap();
        assert_eq!(v, 3);
        assert!(matches!(k, SimKey::Nal(b) if b[0] == 0x01 && b[15] == 0x10));
        let (_, k) = parse_key(
            Profile::SrtpSm4,
            "1:0123456789abcdeffedcba9876543210:00112233445566778899aabbccdd",
        )
        .unwrap();
        let SimKey::Srtp(m) = k else { panic!() };
        let inline = m.to_inline();
        let (_, k2) = parse_key(Profile::SrtpSm4, &format!("2:{inline}")).unwrap();
        assert!(matches!(k2, SimKey::Srtp(m2) if m2 == m));
        for bad in ["x:00", "1:0123", "0123456789abcdeffedcba9876543210"] {
            assert!(parse_key(Profile::NalOfb, bad).is_err(), "{bad}");
        }
        assert!(parse_key(Profile::SrtpSm4, "1:0123456789abcdeffedcba9876543210").is_err());
    }

    #[test]
    fn rotation_follows_the_schedule_and_stops_at_the_last_key() {
        let e = Encryption {
            profile: Profile::NalOfb,
            keys: vec![(1, SimKey::Nal([1; 16])), (2, SimKey::Nal([2; 16]))],
            rotate_every: Some(10),
            wrong_key: false,
        };
        let mut s = StreamEnc::new(&e, Codec::H264, None).unwrap();
        let mut seen = Vec::new();
        for n in 0..30 {
            s.begin_frame(n);
            seen.push(s.key_version());
        }
        assert_eq!(&seen[..10], &[1; 10]);
        assert_eq!(&seen[10..], &[2; 20]);
    }
}
