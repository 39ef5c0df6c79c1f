//! HTTP digest authentication as SIP uses it (RFC 3261 22, RFC 2617), MD5
//! with and without `qop=auth`.
//!
//! Not rsip's `DigestGenerator`: rsip parses `nc` as a decimal integer (a
//! device's `nc=0000000a` fails to parse) and re-serialises the `uri`
//! instead of hashing it as sent. Here every value is hashed exactly as the
//! device sent it.
//!
//! Nonces are stateless until used: `hex(issued_at, random, mac)` with an
//! HMAC-SHA256 under a per-process secret, so a flood of challenges or bad
//! credentials holds no memory. A nonce that authenticated a request is
//! then tracked with its highest `nc` so a captured request cannot be
//! replayed (qop=auth); without qop a nonce is valid until it expires.

use std::collections::HashMap;

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("not a Digest header")]
    Scheme,
    #[error("malformed digest parameters")]
    Syntax,
    #[error("missing digest parameter {0}")]
    Missing(&'static str),
    #[error("unsupported algorithm {0}")]
    Algorithm(String),
    #[error("unsupported qop {0}")]
    Qop(String),
    #[error("bad nc {0}")]
    Nc(String),
}

/// `name=value, name="value"` pairs after the scheme, names lower-cased.
pub fn parse_params(s: &str) -> Result<Vec<(String, String)>, DigestError> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t' || b[*i] == b',') {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' {
            i += 1;
        }
        let name = s[start..i].trim().to_ascii_lowercase();
        if name.is_empty() || i >= b.len() || b[i] != b'=' {
            return Err(DigestError::Syntax);
        }
        i += 1;
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        let value = if i < b.len() && b[i] == b'"' {
            i += 1;
            let mut v = String::new();
            loop {
                match b.get(i) {
                    None => return Err(DigestError::Syntax),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < b.len() => {
                        // Quoted-pair: take the next char whole (UTF-8 safe).
                        let c = s[i + 1..].chars().next().ok_or(DigestError::Syntax)?;
                        v.push(c);
                        i += 1 + c.len_utf8();
                    }
                    Some(_) => {
                        let c = s[i..].chars().next().ok_or(DigestError::Syntax)?;
                        v.push(c);
                        i += c.len_utf8();
                    }
                }
            }
            v
        } else {
            let start = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            s[start..i].trim().to_string()
        };
        out.push((name, value));
    }
    Ok(out)
}

fn strip_scheme(header: &str) -> Result<&str, DigestError> {
    let h = header.trim_start();
    match h.get(..6) {
        Some(s) if s.eq_ignore_ascii_case("digest") => Ok(&h[6..]),
        _ => Err(DigestError::Scheme),
    }
}

/// The `Authorization` header of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Option<String>,
    pub cnonce: Option<String>,
    pub opaque: Option<String>,
    /// `Some((nc as sent, cnonce))` when qop=auth.
    pub qop: Option<(String, String)>,
}

impl Credentials {
    pub fn parse(header: &str) -> Result<Self, DigestError> {
        let params = parse_params(strip_scheme(header)?)?;
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let need = |k: &'static str| get(k).ok_or(DigestError::Missing(k));
        let algorithm = get("algorithm");
        if let Some(a) = &algorithm {
            if !a.eq_ignore_ascii_case("md5") {
                return Err(DigestError::Algorithm(a.chars().take(32).collect()));
            }
        }
        let cnonce = get("cnonce");
        let qop = match get("qop") {
            None => None,
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                let nc = need("nc")?;
                if nc.len() != 8 || u32::from_str_radix(&nc, 16).is_err() {
                    return Err(DigestError::Nc(nc.chars().take(16).collect()));
                }
                Some((nc, cnonce.clone().ok_or(DigestError::Missing("cnonce"))?))
            }
            Some(q) => return Err(DigestError::Qop(q.chars().take(32).collect())),
        };
        Ok(Credentials {
            username: need("username")?,
            realm: need("realm")?,
            nonce: need("nonce")?,
            uri: need("uri")?,
            response: need("response")?,
            algorithm,
            cnonce,
            opaque: get("opaque"),
            qop,
        })
    }

    /// The header value a client sends.
    pub fn to_header(&self) -> String {
        let mut s = format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", response=\"{}\", algorithm=MD5",
            self.username, self.realm, self.nonce, self.uri, self.response
        );
        if let Some((nc, cnonce)) = &self.qop {
            s.push_str(&format!(", cnonce=\"{cnonce}\", qop=auth, nc={nc}"));
        }
        if let Some(o) = &self.opaque {
            s.push_str(&format!(", opaque=\"{o}\""));
        }
        s
    }
}

/// The `WWW-Authenticate` header of a 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub qop: bool,
    pub stale: bool,
    pub opaque: Option<String>,
}

impl Challenge {
    pub fn parse(header: &str) -> Result<Self, DigestError> {
        let params = parse_params(strip_scheme(header)?)?;
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        Ok(Challenge {
            realm: get("realm").ok_or(DigestError::Missing("realm"))?,
            nonce: get("nonce").ok_or(DigestError::Missing("nonce"))?,
            qop: get("qop").is_some_and(|q| q.split(',').any(|x| x.trim() == "auth")),
            stale: get("stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
            opaque: get("opaque"),
        })
    }

    pub fn to_header(&self) -> String {
        let mut s = format!(
            "Digest realm=\"{}\", nonce=\"{}\", algorithm=MD5",
            self.realm, self.nonce
        );
        if self.qop {
            s.push_str(", qop=\"auth\"");
        }
        if self.stale {
            s.push_str(", stale=true");
        }
        if let Some(o) = &self.opaque {
            s.push_str(&format!(", opaque=\"{o}\""));
        }
        s
    }

    /// What a client (the device simulator, tests) answers with.
    pub fn answer(
        &self,
        username: &str,
        password: &str,
        method: &str,
        uri: &str,
        nc: u32,
        cnonce: &str,
    ) -> Credentials {
        let qop = self.qop.then(|| (format!("{nc:08x}"), cnonce.to_string()));
        let response = response(
            username,
            &self.realm,
            password,
            method,
            uri,
            &self.nonce,
            qop.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
        );
        Credentials {
            username: username.into(),
            realm: self.realm.clone(),
            nonce: self.nonce.clone(),
            uri: uri.into(),
            response,
            algorithm: Some("MD5".into()),
            cnonce: qop.as_ref().map(|q| q.1.clone()),
            opaque: self.opaque.clone(),
            qop,
        }
    }
}

fn md5_hex(parts: &[&str]) -> String {
    let mut h = Md5::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(p.as_bytes());
    }
    hex(&h.finalize())
}

pub fn hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(H[(x >> 4) as usize] as char);
        s.push(H[(x & 15) as usize] as char);
    }
    s
}

/// The request-digest (RFC 2617 3.2.2.1); `qop` = (nc, cnonce) as sent.
pub fn response(
    username: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<(&str, &str)>,
) -> String {
    let ha1 = md5_hex(&[username, realm, password]);
    let ha2 = md5_hex(&[method, uri]);
    match qop {
        Some((nc, cnonce)) => md5_hex(&[&ha1, nonce, nc, cnonce, "auth", &ha2]),
        None => md5_hex(&[&ha1, nonce, &ha2]),
    }
}

/// Outcome of checking credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Nonce expired, unknown to this process, or nc not increasing:
    /// answer 401 with a fresh nonce (stale=true).
    Stale,
    /// Wrong password (or wrong realm/user): 403.
    Forbidden,
}

/// Issues and checks nonces.
pub struct Nonces {
    secret: [u8; 32],
    ttl_secs: u64,
    /// Nonces that authenticated something: highest nc (0 without qop), expiry.
    used: HashMap<String, (u32, u64)>,
    max_tracked: usize,
    counter: u64,
}

const NONCE_LEN: usize = 48; // 8 B time + 8 B counter/random + 8 B mac, hex

impl Nonces {
    pub fn new(ttl_secs: u64) -> Self {
        let mut secret = [0u8; 32];
        // A failed getrandom leaves a zero secret: still unique per nonce
        // (the counter), only forgeable; log-worthy but not fatal.
        let _ = getrandom::fill(&mut secret);
        let mut c = [0u8; 8];
        let _ = getrandom::fill(&mut c);
        Nonces {
            secret,
            ttl_secs,
            used: HashMap::new(),
            max_tracked: 200_000,
            counter: u64::from_le_bytes(c),
        }
    }

    fn mac(&self, body: &[u8]) -> [u8; 8] {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        m.update(body);
        let out = m.finalize().into_bytes();
        let mut r = [0u8; 8];
        r.copy_from_slice(&out[..8]);
        r
    }

    /// A fresh nonce issued at `now` (seconds, any monotonic origin).
    pub fn issue(&mut self, now: u64) -> String {
        self.counter = self.counter.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut body = [0u8; 16];
        body[..8].copy_from_slice(&now.to_be_bytes());
        body[8..].copy_from_slice(&self.counter.to_be_bytes());
        let mac = self.mac(&body);
        let mut all = [0u8; 24];
        all[..16].copy_from_slice(&body);
        all[16..].copy_from_slice(&mac);
        hex(&all)
    }

    /// Issue time of a nonce this process made, `None` if forged/foreign.
    fn issued_at(&self, nonce: &str) -> Option<u64> {
        if nonce.len() != NONCE_LEN || !nonce.is_ascii() {
            return None;
        }
        let mut all = [0u8; 24];
        for (i, b) in all.iter_mut().enumerate() {
            *b = u8::from_str_radix(&nonce[2 * i..2 * i + 2], 16).ok()?;
        }
        let mac = self.mac(&all[..16]);
        // Constant-time enough: the mac is not secret-dependent timing-wise
        // beyond its own value, compare all bytes anyway.
        let diff = mac
            .iter()
            .zip(&all[16..])
            .fold(0u8, |d, (a, b)| d | (a ^ b));
        if diff != 0 {
            return None;
        }
        Some(u64::from_be_bytes(all[..8].try_into().ok()?))
    }

    /// Checks credentials for `method` against `password` and `realm`.
    pub fn verify(
        &mut self,
        c: &Credentials,
        method: &str,
        realm: &str,
        password: &str,
        now: u64,
    ) -> Verdict {
        if c.realm != realm {
            return Verdict::Forbidden;
        }
        let Some(issued) = self.issued_at(&c.nonce) else {
            return Verdict::Stale;
        };
        let expires = issued.saturating_add(self.ttl_secs);
        if now > expires || issued > now.saturating_add(5) {
            return Verdict::Stale;
        }
        let nc = match &c.qop {
            Some((nc, _)) => match u32::from_str_radix(nc, 16) {
                Ok(n) if n > 0 => n,
                _ => return Verdict::Forbidden,
            },
            None => 0,
        };
        if let Some((last, _)) = self.used.get(&c.nonce) {
            if c.qop.is_some() && nc <= *last {
                return Verdict::Stale; // replayed nc
            }
        }
        let expect = response(
            &c.username,
            &c.realm,
            password,
            method,
            &c.uri,
            &c.nonce,
            c.qop.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
        );
        if !expect.eq_ignore_ascii_case(&c.response) {
            return Verdict::Forbidden;
        }
        if self.used.len() >= self.max_tracked {
            self.purge(now);
            if self.used.len() >= self.max_tracked {
                // Still full of live nonces: forget them all; they turn
                // stale and their devices re-authenticate. Memory stays bounded.
                self.used.clear();
            }
        }
        self.used.insert(c.nonce.clone(), (nc, expires));
        Verdict::Ok
    }

    /// Drops expired entries.
    pub fn purge(&mut self, now: u64) {
        self.used.retain(|_, (_, exp)| *exp >= now);
    }

    pub fn tracked(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_vector() {
        // RFC 2617 3.5 (HTTP GET; the algorithm is the same for SIP).
        let r = response(
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Some(("00000001", "0a4f113b")),
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn parses_device_headers() {
        let h = "Digest username=\"34020000001320000001\", realm=\"3402000000\", nonce=\"abc\", uri=\"sip:34020000002000000001@3402000000\", response=\"0123\", algorithm=MD5, cnonce=\"0a4f113b\", qop=auth, nc=0000000a";
        let c = Credentials::parse(h).unwrap();
        assert_eq!(c.qop, Some(("0000000a".into(), "0a4f113b".into())));
        assert_eq!(c.uri, "sip:34020000002000000001@3402000000");
        assert_eq!(Credentials::parse(&c.to_header()).unwrap(), c);
        // No qop, lower-case scheme, unquoted values.
        let c =
            Credentials::parse("digest username=a,realm=b,nonce=c,uri=sip:x,response=d").unwrap();
        assert_eq!((c.username.as_str(), c.qop), ("a", None));
        assert_eq!(
            Credentials::parse("Basic abc").unwrap_err(),
            DigestError::Scheme
        );
        assert_eq!(
            Credentials::parse("Digest username=\"a").unwrap_err(),
            DigestError::Syntax
        );
        assert!(matches!(
            Credentials::parse(
                "Digest username=a,realm=b,nonce=c,uri=d,response=e,qop=auth,nc=zz,cnonce=x"
            ),
            Err(DigestError::Nc(_))
        ));
        assert!(matches!(
            Credentials::parse(
                "Digest username=a,realm=b,nonce=c,uri=d,response=e,algorithm=SHA-256"
            ),
            Err(DigestError::Algorithm(_))
        ));
        assert_eq!(
            Credentials::parse("Digest realm=b,nonce=c,uri=d,response=e").unwrap_err(),
            DigestError::Missing("username")
        );
        let ch = Challenge {
            realm: "3402000000".into(),
            nonce: "n".into(),
            qop: true,
            stale: true,
            opaque: None,
        };
        assert_eq!(Challenge::parse(&ch.to_header()).unwrap(), ch);
    }

    #[test]
    fn nonce_lifecycle_with_and_without_qop() {
        let mut n = Nonces::new(60);
        for qop in [false, true] {
            let ch = Challenge {
                realm: "3402000000".into(),
                nonce: n.issue(1000),
                qop,
                stale: false,
                opaque: None,
            };
            let ok = ch.answer("dev", "pw", "REGISTER", "sip:3402000000", 1, "cn");
            assert_eq!(
                n.verify(&ok, "REGISTER", "3402000000", "pw", 1001),
                Verdict::Ok
            );
            let bad = ch.answer("dev", "wrong", "REGISTER", "sip:3402000000", 2, "cn");
            assert_eq!(
                n.verify(&bad, "REGISTER", "3402000000", "pw", 1001),
                Verdict::Forbidden
            );
            // Same nc again: a replay under qop, fine without.
            let again = n.verify(&ok, "REGISTER", "3402000000", "pw", 1002);
            assert_eq!(again, if qop { Verdict::Stale } else { Verdict::Ok });
            let next = ch.answer("dev", "pw", "REGISTER", "sip:3402000000", 2, "cn2");
            assert_eq!(
                n.verify(&next, "REGISTER", "3402000000", "pw", 1003),
                Verdict::Ok
            );
            // Expired.
            assert_eq!(
                n.verify(&next, "REGISTER", "3402000000", "pw", 1061),
                Verdict::Stale
            );
            // Wrong realm.
            assert_eq!(
                n.verify(&ok, "REGISTER", "other", "pw", 1001),
                Verdict::Forbidden
            );
        }
        // Forged and foreign nonces are stale, not an error.
        let mut c = Challenge {
            realm: "r".into(),
            nonce: "x".repeat(48),
            qop: false,
            stale: false,
            opaque: None,
        }
        .answer("d", "p", "REGISTER", "u", 1, "c");
        assert_eq!(n.verify(&c, "REGISTER", "r", "p", 1000), Verdict::Stale);
        let other = Nonces::new(60).issue(1000);
        c.nonce = other;
        assert_eq!(n.verify(&c, "REGISTER", "r", "p", 1000), Verdict::Stale);
        n.purge(10_000);
        assert_eq!(n.tracked(), 0);
    }

    #[test]
    fn param_parser_never_panics() {
        let s = "Digest username=\"\\é\", realm=\"中\", nonce=,";
        for i in 0..=s.len() {
            if let Some(p) = s.get(..i) {
                let _ = Credentials::parse(p);
                let _ = Challenge::parse(p);
            }
        }
    }
}
