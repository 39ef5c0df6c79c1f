//! The parts of a SIP message the gateway acts on, read once from an rsip
//! message ([`Head`]), and builders for the responses and requests it sends.
//!
//! rsip 0.4's typed headers fail on things GB/T 28181 devices send (hex
//! `nc` in Authorization, some name-addr forms), so only the header split
//! and Via come from rsip's typed layer; From/To/Contact/CSeq are read from
//! the raw values here, liberally.

use std::net::SocketAddr;

use rsip::prelude::*;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HeadError {
    #[error("missing or malformed {0} header")]
    Header(&'static str),
}

/// The transport named in a Via.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }
    pub fn reliable(self) -> bool {
        matches!(self, Transport::Tcp)
    }
}

/// `sip:user@host:port;params` pieces of a name-addr or addr-spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameAddr {
    /// The whole header value as received.
    pub raw: String,
    /// The URI (without angle brackets).
    pub uri: String,
    pub user: String,
    /// host[:port] of the URI.
    pub host: String,
    pub tag: Option<String>,
}

impl NameAddr {
    pub fn parse(v: &str) -> Option<Self> {
        let v = v.trim();
        let (uri, params) = match (v.find('<'), v.find('>')) {
            (Some(a), Some(b)) if a < b => (&v[a + 1..b], &v[b + 1..]),
            (None, None) => match v.split_once(';') {
                Some((u, p)) => (u, p),
                None => (v, ""),
            },
            _ => return None,
        };
        let rest = uri
            .strip_prefix("sip:")
            .or_else(|| uri.strip_prefix("sips:"))
            .or_else(|| uri.strip_prefix("SIP:"))?;
        let rest = rest.split([';', '?']).next().unwrap_or("");
        let (user, host) = match rest.rsplit_once('@') {
            Some((u, h)) => (u.split(':').next().unwrap_or(""), h),
            None => ("", rest),
        };
        if host.is_empty() {
            return None;
        }
        let tag = params
            .split(';')
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| k.eq_ignore_ascii_case("tag"))
            .map(|(_, t)| t.to_string());
        Some(NameAddr {
            raw: v.to_string(),
            uri: uri.to_string(),
            user: user.to_string(),
            host: host.to_string(),
            tag,
        })
    }

    /// A parameter of the header (after the URI), e.g. `expires` of Contact.
    pub fn param(&self, name: &str) -> Option<String> {
        let after = match self.raw.find('>') {
            Some(i) => &self.raw[i + 1..],
            None => self.raw.split_once(';').map(|(_, p)| p).unwrap_or(""),
        };
        after
            .split(';')
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    }
}

/// The top Via.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    pub transport: Transport,
    /// host[:port] as sent.
    pub sent_by: String,
    pub branch: Option<String>,
    /// The `rport` parameter was present (RFC 3581).
    pub rport: bool,
}

fn parse_via(v: &str) -> Option<Via> {
    let v = v.split(',').next()?.trim();
    let (proto, rest) = v.split_once(char::is_whitespace)?;
    let transport = match proto.rsplit('/').next()?.to_ascii_uppercase().as_str() {
        "UDP" => Transport::Udp,
        "TCP" => Transport::Tcp,
        _ => return None,
    };
    let mut parts = rest.trim().split(';');
    let sent_by = parts.next()?.trim().to_string();
    if sent_by.is_empty() {
        return None;
    }
    let (mut branch, mut rport) = (None, false);
    for p in parts {
        let (k, val) = match p.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (p.trim(), None),
        };
        if k.eq_ignore_ascii_case("branch") {
            branch = val.map(str::to_string);
        } else if k.eq_ignore_ascii_case("rport") {
            rport = true;
        }
    }
    Some(Via {
        transport,
        sent_by,
        branch,
        rport,
    })
}

/// Everything the gateway reads from a message.
#[derive(Debug, Clone)]
pub struct Head {
    /// Request method (upper case), `None` for responses.
    pub method: Option<String>,
    /// Response status, `None` for requests.
    pub status: Option<u16>,
    pub reason: String,
    /// Request-URI as sent.
    pub uri: String,
    /// Every Via header value in order (echoed in responses).
    pub vias: Vec<String>,
    pub via: Via,
    pub from: NameAddr,
    pub to: NameAddr,
    pub call_id: String,
    pub cseq: u32,
    pub cseq_method: String,
    pub contact: Option<NameAddr>,
    pub expires: Option<u32>,
    pub content_type: Option<String>,
    pub authorization: Option<String>,
    pub www_authenticate: Option<String>,
    pub user_agent: Option<String>,
    /// `X-GB-ver` (2022 devices): "3.0", "2.0", ...
    pub gb_ver: Option<String>,
    pub subject: Option<String>,
    pub date: Option<String>,
    /// `Event` (SUBSCRIBE/NOTIFY): `Catalog;id=7`, `presence`.
    pub event: Option<String>,
    /// `Subscription-State` (NOTIFY): `active;expires=3600`, `terminated`.
    pub subscription_state: Option<String>,
    pub body: Vec<u8>,
}

impl Head {
    pub fn parse(m: &rsip::SipMessage) -> Result<Head, HeadError> {
        let (method, status, reason, uri) = match m {
            rsip::SipMessage::Request(r) => (
                Some(r.method().to_string().to_ascii_uppercase()),
                None,
                String::new(),
                r.uri().to_string(),
            ),
            rsip::SipMessage::Response(r) => {
                let code: u16 = r.status_code().code();
                (None, Some(code), r.status_code().to_string(), String::new())
            }
        };
        let mut h = Head {
            method,
            status,
            reason,
            uri,
            vias: Vec::new(),
            via: Via {
                transport: Transport::Udp,
                sent_by: String::new(),
                branch: None,
                rport: false,
            },
            from: NameAddr::default(),
            to: NameAddr::default(),
            call_id: String::new(),
            cseq: 0,
            cseq_method: String::new(),
            contact: None,
            expires: None,
            content_type: None,
            authorization: None,
            www_authenticate: None,
            user_agent: None,
            gb_ver: None,
            subject: None,
            date: None,
            event: None,
            subscription_state: None,
            body: m.body().clone(),
        };
        let (mut from, mut to, mut cseq, mut call_id) = (None, None, None, None);
        for hdr in m.headers().iter() {
            use rsip::Header as H;
            match hdr {
                H::Via(v) => h.vias.push(v.value().to_string()),
                H::From(v) => from = Some(v.value().to_string()),
                H::To(v) => to = Some(v.value().to_string()),
                H::CallId(v) => call_id = Some(v.value().to_string()),
                H::CSeq(v) => cseq = Some(v.value().to_string()),
                H::Contact(v) => {
                    if h.contact.is_none() {
                        h.contact = NameAddr::parse(v.value())
                    }
                }
                H::Expires(v) => h.expires = v.value().trim().parse().ok(),
                H::ContentType(v) => h.content_type = Some(v.value().to_string()),
                H::Authorization(v) => h.authorization = Some(v.value().to_string()),
                H::WwwAuthenticate(v) => h.www_authenticate = Some(v.value().to_string()),
                H::UserAgent(v) => h.user_agent = Some(v.value().to_string()),
                H::Subject(v) => h.subject = Some(v.value().to_string()),
                H::Date(v) => h.date = Some(v.value().to_string()),
                H::Event(v) => h.event = Some(v.value().trim().to_string()),
                H::SubscriptionState(v) => {
                    h.subscription_state = Some(v.value().trim().to_string())
                }
                H::Other(n, v) if n.eq_ignore_ascii_case("X-GB-ver") => {
                    h.gb_ver = Some(v.trim().to_string())
                }
                _ => {}
            }
        }
        h.via = h
            .vias
            .first()
            .and_then(|v| parse_via(v))
            .ok_or(HeadError::Header("Via"))?;
        h.from = from
            .as_deref()
            .and_then(NameAddr::parse)
            .ok_or(HeadError::Header("From"))?;
        h.to = to
            .as_deref()
            .and_then(NameAddr::parse)
            .ok_or(HeadError::Header("To"))?;
        h.call_id = call_id
            .filter(|c| !c.trim().is_empty())
            .ok_or(HeadError::Header("Call-ID"))?;
        let cseq = cseq.ok_or(HeadError::Header("CSeq"))?;
        let (n, m) = cseq
            .trim()
            .split_once(char::is_whitespace)
            .ok_or(HeadError::Header("CSeq"))?;
        h.cseq = n.parse().map_err(|_| HeadError::Header("CSeq"))?;
        h.cseq_method = m.trim().to_ascii_uppercase();
        if let Some(method) = &h.method {
            if *method != h.cseq_method && method != "ACK" && method != "CANCEL" {
                return Err(HeadError::Header("CSeq"));
            }
        }
        Ok(h)
    }

    /// Content-Type is MANSCDP XML (any case).
    pub fn is_manscdp(&self) -> bool {
        self.content_type
            .as_deref()
            .is_some_and(|c| c.to_ascii_lowercase().contains("manscdp"))
    }

    /// The top Via with `received`/`rport` filled in for a reply (RFC 3581),
    /// then the other Vias unchanged.
    fn reply_vias(&self, source: SocketAddr) -> Vec<String> {
        let mut vias = self.vias.clone();
        if let Some(top) = vias.first_mut() {
            let mut out = String::with_capacity(top.len() + 40);
            let mut parts = top.split(';');
            out.push_str(parts.next().unwrap_or("").trim_end());
            for p in parts {
                let k = p.split('=').next().unwrap_or("").trim();
                if k.eq_ignore_ascii_case("rport") || k.eq_ignore_ascii_case("received") {
                    continue;
                }
                out.push(';');
                out.push_str(p.trim());
            }
            if self.via.rport {
                out.push_str(&format!(";rport={}", source.port()));
            }
            out.push_str(&format!(";received={}", source.ip()));
            *top = out;
        }
        vias
    }
}

/// Builds a response to `req` (received from `source`). `to_tag` is added
/// to To when it has none. `headers` are extra `Name: value` lines.
pub fn response(
    req: &Head,
    source: SocketAddr,
    code: u16,
    reason: &str,
    to_tag: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let (content_type, body) = match body {
        Some((ct, b)) => (Some(ct), b),
        None => (None, &[][..]),
    };
    let mut s = String::with_capacity(512);
    s.push_str(&format!("SIP/2.0 {code} {reason}\r\n"));
    for v in req.reply_vias(source) {
        s.push_str(&format!("Via: {v}\r\n"));
    }
    s.push_str(&format!("From: {}\r\n", req.from.raw));
    if req.to.tag.is_some() || code == 100 {
        s.push_str(&format!("To: {}\r\n", req.to.raw));
    } else {
        s.push_str(&format!("To: {};tag={to_tag}\r\n", req.to.raw));
    }
    s.push_str(&format!(
        "Call-ID: {}\r\nCSeq: {} {}\r\n",
        req.call_id, req.cseq, req.cseq_method
    ));
    for (n, v) in headers {
        s.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(ct) = content_type {
        s.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    s.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = s.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A request the gateway originates (outside or inside a dialog).
pub struct Outgoing<'a> {
    pub method: &'a str,
    pub uri: &'a str,
    pub transport: Transport,
    /// host:port we put in Via and Contact.
    pub local: &'a str,
    pub branch: &'a str,
    pub from: &'a str,
    pub from_tag: &'a str,
    pub to: &'a str,
    pub to_tag: Option<&'a str>,
    pub call_id: &'a str,
    pub cseq: u32,
    pub contact: Option<&'a str>,
    pub headers: &'a [(&'a str, &'a str)],
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

impl Outgoing<'_> {
    pub fn build(&self) -> Vec<u8> {
        let mut s = String::with_capacity(512);
        s.push_str(&format!("{} {} SIP/2.0\r\n", self.method, self.uri));
        s.push_str(&format!(
            "Via: SIP/2.0/{} {};rport;branch={}\r\n",
            self.transport.as_str(),
            self.local,
            self.branch
        ));
        s.push_str(&format!("From: <{}>;tag={}\r\n", self.from, self.from_tag));
        match self.to_tag {
            Some(t) => s.push_str(&format!("To: <{}>;tag={t}\r\n", self.to)),
            None => s.push_str(&format!("To: <{}>\r\n", self.to)),
        }
        s.push_str(&format!(
            "Call-ID: {}\r\nCSeq: {} {}\r\nMax-Forwards: 70\r\n",
            self.call_id, self.cseq, self.method
        ));
        if let Some(c) = self.contact {
            s.push_str(&format!("Contact: <{c}>\r\n"));
        }
        for (n, v) in self.headers {
            s.push_str(&format!("{n}: {v}\r\n"));
        }
        if let Some(ct) = self.content_type {
            s.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        s.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        let mut out = s.into_bytes();
        out.extend_from_slice(self.body);
        out
    }
}

/// A random token of `n` hex chars (tags, Call-IDs, branches).
pub fn token(n: usize) -> String {
    let mut b = vec![0u8; n.div_ceil(2)];
    if getrandom::fill(&mut b).is_err() {
        // Fall back to the clock; uniqueness, not secrecy, is what counts.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t >> ((i % 16) * 8)) as u8 ^ i as u8;
        }
    }
    let mut s = crate::digest::hex(&b);
    s.truncate(n);
    s
}

/// A new RFC 3261 branch.
pub fn branch() -> String {
    format!("z9hG4bK{}", token(16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    fn head(raw: &str) -> Head {
        Head::parse(&wire::parse(raw.as_bytes(), 65535).unwrap()).unwrap()
    }

    const REG: &str = "REGISTER sip:34020000002000000001@3402000000 SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.64:5060;rport;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK0\r\nFrom: <sip:34020000001320000001@3402000000>;tag=1\r\nTo: \"cam\" <sip:34020000001320000001@3402000000>\r\nCall-ID: 1\r\nCSeq: 7 REGISTER\r\nContact: <sip:34020000001320000001@192.168.1.64:5060>;expires=600\r\nExpires: 3600\r\nX-GB-ver: 3.0\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn reads_a_register() {
        let h = head(REG);
        assert_eq!(h.method.as_deref(), Some("REGISTER"));
        assert_eq!(h.via.sent_by, "192.168.1.64:5060");
        assert!(h.via.rport);
        assert_eq!(h.via.branch.as_deref(), Some("z9hG4bK1"));
        assert_eq!(h.from.user, "34020000001320000001");
        assert_eq!(h.from.tag.as_deref(), Some("1"));
        assert_eq!(h.to.host, "3402000000");
        assert_eq!((h.cseq, h.cseq_method.as_str()), (7, "REGISTER"));
        assert_eq!(h.expires, Some(3600));
        assert_eq!(
            h.contact.as_ref().unwrap().param("expires").as_deref(),
            Some("600")
        );
        assert_eq!(h.gb_ver.as_deref(), Some("3.0"));
    }

    #[test]
    fn response_echoes_and_fills_rport() {
        let h = head(REG);
        let src: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let r = response(&h, src, 200, "OK", "abc", &[("Expires", "3600")], None);
        let r = String::from_utf8(r).unwrap();
        assert!(r.starts_with("SIP/2.0 200 OK\r\n"));
        assert!(r.contains(
            "Via: SIP/2.0/UDP 192.168.1.64:5060;branch=z9hG4bK1;rport=40000;received=203.0.113.9\r\n"
        ));
        assert!(r.contains("Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK0\r\n"));
        assert!(r.contains("To: \"cam\" <sip:34020000001320000001@3402000000>;tag=abc\r\n"));
        assert!(r.contains("CSeq: 7 REGISTER\r\n"));
        // The response parses back.
        let back = head(&r);
        assert_eq!(back.status, Some(200));
        assert_eq!(back.to.tag.as_deref(), Some("abc"));
    }

    #[test]
    fn missing_headers_are_named() {
        for (needle, name) in [
            (
                "From: <sip:34020000001320000001@3402000000>;tag=1\r\n",
                "From",
            ),
            ("Call-ID: 1\r\n", "Call-ID"),
            ("CSeq: 7 REGISTER\r\n", "CSeq"),
        ] {
            let raw = REG.replace(needle, "");
            let m = wire::parse(raw.as_bytes(), 65535);
            if let Ok(m) = m {
                assert_eq!(Head::parse(&m).unwrap_err(), HeadError::Header(name));
            }
        }
        let raw = REG.replace("CSeq: 7 REGISTER", "CSeq: 7 MESSAGE");
        let m = wire::parse(raw.as_bytes(), 65535).unwrap();
        assert_eq!(Head::parse(&m).unwrap_err(), HeadError::Header("CSeq"));
    }

    #[test]
    fn outgoing_request_parses() {
        let b = branch();
        let o = Outgoing {
            method: "MESSAGE",
            uri: "sip:34020000001320000001@198.18.0.2:5060",
            transport: Transport::Tcp,
            local: "198.18.0.1:5060",
            branch: &b,
            from: "sip:34020000002000000001@3402000000",
            from_tag: "t1",
            to: "sip:34020000001320000001@3402000000",
            to_tag: None,
            call_id: "c1",
            cseq: 3,
            contact: None,
            headers: &[],
            content_type: Some("Application/MANSCDP+xml"),
            body: b"<Query/>",
        }
        .build();
        let h = Head::parse(&wire::parse(&o, 65535).unwrap()).unwrap();
        assert_eq!(h.via.transport, Transport::Tcp);
        assert_eq!(h.via.branch.as_deref(), Some(b.as_str()));
        assert!(h.is_manscdp());
        assert_eq!(h.body, b"<Query/>");
        assert_eq!(token(10).len(), 10);
        assert_ne!(branch(), branch());
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse("sip:1@h:5060;tag=x").unwrap();
        assert_eq!(
            (n.user.as_str(), n.host.as_str(), n.tag.as_deref()),
            ("1", "h:5060", Some("x"))
        );
        assert!(NameAddr::parse("<sip:1@h").is_none());
        assert!(NameAddr::parse("<tel:123>").is_none());
        let n = NameAddr::parse("<sip:3402000000>").unwrap();
        assert_eq!((n.user.as_str(), n.host.as_str()), ("", "3402000000"));
    }
}
