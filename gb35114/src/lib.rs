//! SM4/SM3 media encryption of the gateway: the primitives (SM4 block, OFB,
//! CTR and ECB modes, key wrapping, SM3 and HMAC-SM3) and the two profiles
//! of `docs/media-encryption.md`:
//!
//! - [`nal`]: `sm4-nal-ofb`, SM4-OFB over the RBSP of H.264/H.265 VCL NAL
//!   units, security parameters in an SEI message of each access unit;
//! - [`srtp`]: `srtp-sm4`, RFC 3711 SRTP with SM4 in AES's place
//!   (`SM4_CM_128_HMAC_SM3_80`).
//!
//! The crate is pure: no I/O, no `unsafe`, and nothing in it panics on any
//! input (network bytes, SDP text, keys). The block cipher, its modes and
//! SM3 come from `gmcrypt` (SIMD with runtime dispatch); the profiles, the
//! SRTP key derivation and the NAL handling are here. The NAL units of an
//! access unit are decrypted in parallel OFB lanes. [`rfc3711`] holds the
//! counter mode and key derivation written over any 16-byte block cipher,
//! so tests can run them with AES against the
//! vectors of RFC 3711 Appendix B.

pub mod nal;
pub mod rfc3711;
pub mod sm3;
pub mod sm4;
pub mod srtp;

/// Why an access unit or packet was not decrypted. The daemon counts these
/// per stream and per reason; [`Failure::as_str`] gives the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The channel has no key at all.
    NoKey,
    /// The access unit names a key_version the channel does not have.
    UnknownKeyVersion,
    /// SRTP: no live key produces the packet's authentication tag.
    BadTag,
    /// SRTP: the packet index was already received or is older than the window.
    Replay,
    /// Bad syntax: truncated packet or SEI, wrong sizes, unknown version.
    Malformed,
    /// sm4-nal-ofb: the decrypted slice headers are implausible, so the key
    /// is most likely wrong (a plausibility check, not an integrity check).
    WrongKey,
}

impl Failure {
    /// Every reason, in the order of the counters of [`nal::NalStats::failures`].
    pub const ALL: [Failure; 6] = [
        Failure::NoKey,
        Failure::UnknownKeyVersion,
        Failure::BadTag,
        Failure::Replay,
        Failure::Malformed,
        Failure::WrongKey,
    ];

    /// Stable label for metrics and status output.
    pub fn as_str(&self) -> &'static str {
        match self {
            Failure::NoKey => "no_key",
            Failure::UnknownKeyVersion => "unknown_key_version",
            Failure::BadTag => "bad_tag",
            Failure::Replay => "replay",
            Failure::Malformed => "malformed",
            Failure::WrongKey => "wrong_key",
        }
    }

    /// Position of this reason in [`Failure::ALL`] (and in per-reason counter arrays).
    pub fn index(&self) -> usize {
        match self {
            Failure::NoKey => 0,
            Failure::UnknownKeyVersion => 1,
            Failure::BadTag => 2,
            Failure::Replay => 3,
            Failure::Malformed => 4,
            Failure::WrongKey => 5,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// API misuse and bad key material. Messages never contain key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// ECB input must be whole 16-byte blocks.
    #[error("length {len} is not a multiple of the 16-byte SM4 block")]
    NotBlockAligned { len: usize },
    /// The key material is not valid base64.
    #[error("key material is not valid base64")]
    Base64,
    /// SRTP master key material must be 16 key bytes followed by 14 salt bytes.
    #[error("SRTP master key material must be 30 bytes (16 key + 14 salt), got {len}")]
    KeyLength { len: usize },
    /// The text is not an `a=crypto:` attribute.
    #[error("not an a=crypto attribute")]
    NotCryptoAttr,
    /// An `a=crypto:` attribute whose syntax is wrong (what is wrong, no key bytes).
    #[error("bad a=crypto attribute: {0}")]
    BadCryptoAttr(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_indices_follow_all() {
        for (i, f) in Failure::ALL.iter().enumerate() {
            assert_eq!(f.index(), i);
        }
        let names: Vec<&str> = Failure::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(
            names,
            [
                "no_key",
                "unknown_key_version",
                "bad_tag",
                "replay",
                "malformed",
                "wrong_key"
            ]
        );
        assert_eq!(Failure::WrongKey.to_string(), "wrong_key");
    }
}
