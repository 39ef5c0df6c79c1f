//! The SDP of GB/T 28181 INVITEs: the platform's offer and a tolerant
//! reader of the device's answer.
//!
//! GB adds `y=` (the SSRC as 10 decimal digits) and `f=` (media format)
//! lines that are not RFC 4566 lines; a strict SDP parser rejects them, so
//! this reader takes any `x=value` line and ignores what it does not know.

use std::net::IpAddr;

use thiserror::Error;

/// How the media travels, from the platform's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MediaTransport {
    /// RTP over UDP.
    Udp,
    /// RTP over TCP (RFC 4571), the platform listens (`a=setup:passive`);
    /// the device connects (the common practice).
    TcpPassive,
    /// RTP over TCP, the platform connects to the device (`a=setup:active`).
    TcpActive,
}

impl MediaTransport {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "udp" => Some(Self::Udp),
            "tcp-passive" | "tcp" => Some(Self::TcpPassive),
            "tcp-active" => Some(Self::TcpActive),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::TcpPassive => "tcp-passive",
            Self::TcpActive => "tcp-active",
        }
    }
}

/// `Play` (live), `Playback` or `Download`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    Play,
    Playback,
    Download,
}

/// The y= value: digit 1 is 0 for live and 1 for history; digits 2-6 are
/// digits 4-8 of the domain; digits 7-10 the stream number (0..=9999).
pub fn ssrc_y(live: bool, domain: &str, stream: u16) -> String {
    let d: String = domain
        .chars()
        .filter(|c| c.is_ascii_digit())
        .chain(std::iter::repeat('0'))
        .skip(3)
        .take(5)
        .collect();
    format!("{}{d}{:04}", if live { 0 } else { 1 }, stream % 10_000)
}

/// The RTP SSRC of a y= value (its decimal value), if it is one.
pub fn y_to_ssrc(y: &str) -> Option<u32> {
    let y = y.trim();
    if y.is_empty() || y.len() > 10 || !y.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    y.parse::<u64>().ok().and_then(|v| u32::try_from(v).ok())
}

/// What the platform offers.
pub struct Offer<'a> {
    /// Platform ID (o= user).
    pub platform_id: &'a str,
    pub kind: SessionKind,
    /// Channel ID (u= line of playback).
    pub channel: &'a str,
    /// Address the device sends media to.
    pub media_ip: IpAddr,
    pub port: u16,
    pub transport: MediaTransport,
    /// 10-digit y= value.
    pub y: &'a str,
    /// Playback/download time range (Unix seconds).
    pub range: Option<(u64, u64)>,
    /// Download: how many times real time the device sends
    /// (`a=downloadspeed:N`).
    pub download_speed: Option<u32>,
    /// An SDES key (RFC 4568) to offer: the attribute value after `a=`,
    /// e.g. `crypto:1 SM4_CM_128_HMAC_SM3_80 inline:...`; the profile
    /// becomes RTP/SAVP.
    pub crypto: Option<&'a str>,
}

impl Offer<'_> {
    pub fn build(&self) -> String {
        let fam = if self.media_ip.is_ipv4() {
            "IP4"
        } else {
            "IP6"
        };
        let (s, t) = match (self.kind, self.range) {
            (SessionKind::Play, _) | (_, None) => ("Play", "0 0".to_string()),
            (SessionKind::Playback, Some((a, b))) => ("Playback", format!("{a} {b}")),
            (SessionKind::Download, Some((a, b))) => ("Download", format!("{a} {b}")),
        };
        let mut o = format!(
            "v=0\r\no={} 0 0 IN {fam} {ip}\r\ns={s}\r\n",
            self.platform_id,
            ip = self.media_ip
        );
        if self.kind != SessionKind::Play {
            o.push_str(&format!("u={}:0\r\n", self.channel));
        }
        let proto = match (self.transport, self.crypto.is_some()) {
            (MediaTransport::Udp, false) => "RTP/AVP",
            (MediaTransport::Udp, true) => "RTP/SAVP",
            (_, false) => "TCP/RTP/AVP",
            (_, true) => "TCP/RTP/SAVP",
        };
        o.push_str(&format!(
            "c=IN {fam} {ip}\r\nt={t}\r\nm=video {} {proto} 96 98 97\r\na=recvonly\r\na=rtpmap:96 PS/90000\r\na=rtpmap:98 H264/90000\r\na=rtpmap:97 MPEG4/90000\r\n",
            self.port,
            ip = self.media_ip
        ));
        match self.transport {
            MediaTransport::Udp => {}
            MediaTransport::TcpPassive => o.push_str("a=setup:passive\r\na=connection:new\r\n"),
            MediaTransport::TcpActive => o.push_str("a=setup:active\r\na=connection:new\r\n"),
        }
        if let (SessionKind::Download, Some(n)) = (self.kind, self.download_speed) {
            o.push_str(&format!("a=downloadspeed:{n}\r\n"));
        }
        if let Some(c) = self.crypto {
            o.push_str(&format!("a={c}\r\n"));
        }
        o.push_str(&format!("y={}\r\n", self.y));
        o
    }
}

/// The answer of the side that sends the media (a device, or a
/// lower-level platform relaying a channel upward): `sendonly`, PS on
/// payload type 96, the offer's `y=`.
pub struct SenderAnswer<'a> {
    /// o= user: the sender's ID.
    pub id: &'a str,
    pub media_ip: IpAddr,
    pub port: u16,
    /// Our own role: for TCP, the opposite of the offer's `a=setup`.
    pub transport: MediaTransport,
    pub y: &'a str,
    /// `f=` (empty fields keep their slashes), if known.
    pub f: Option<&'a str>,
}

impl SenderAnswer<'_> {
    pub fn build(&self) -> String {
        let fam = if self.media_ip.is_ipv4() {
            "IP4"
        } else {
            "IP6"
        };
        let proto = match self.transport {
            MediaTransport::Udp => "RTP/AVP",
            _ => "TCP/RTP/AVP",
        };
        let mut o = format!(
            "v=0\r\no={id} 0 0 IN {fam} {ip}\r\ns=Play\r\nc=IN {fam} {ip}\r\nt=0 0\r\nm=video {port} {proto} 96\r\na=sendonly\r\na=rtpmap:96 PS/90000\r\n",
            id = self.id,
            ip = self.media_ip,
            port = self.port
        );
        match self.transport {
            MediaTransport::Udp => {}
            MediaTransport::TcpPassive => o.push_str("a=setup:passive\r\na=connection:new\r\n"),
            MediaTransport::TcpActive => o.push_str("a=setup:active\r\na=connection:new\r\n"),
        }
        o.push_str(&format!("y={}\r\n", self.y));
        if let Some(f) = self.f {
            o.push_str(&format!("f={f}\r\n"));
        }
        o
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SdpError {
    #[error("SDP is not text")]
    NotText,
    #[error("no usable m=video line")]
    NoMedia,
    #[error("bad port in m= line")]
    BadPort,
    #[error("no usable c= address")]
    NoAddress,
}

impl SdpError {
    pub fn reason(&self) -> &'static str {
        match self {
            SdpError::NotText => "not_text",
            SdpError::NoMedia => "no_media",
            SdpError::BadPort => "bad_port",
            SdpError::NoAddress => "no_address",
        }
    }
}

/// The device's answer, as far as the gateway cares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Answer {
    /// Media address of the device (media-level c= over session-level).
    pub ip: Option<IpAddr>,
    pub port: u16,
    /// "RTP/AVP", "TCP/RTP/AVP", ...
    pub proto: String,
    /// `a=setup:` value (active/passive).
    pub setup: Option<String>,
    /// (payload type, encoding name, clock rate) from the m= list and rtpmaps.
    pub payloads: Vec<(u8, String, u32)>,
    /// y= as sent.
    pub y: Option<String>,
    /// f= as sent.
    pub f: Option<String>,
    /// s= (Play, Playback, ...).
    pub session: Option<String>,
    /// `a=crypto:` values of the media section (RFC 4568), as sent.
    pub crypto: Vec<String>,
}

impl Answer {
    pub fn tcp(&self) -> bool {
        self.proto.to_ascii_uppercase().contains("TCP")
    }
    /// SSRC announced by y=.
    pub fn ssrc(&self) -> Option<u32> {
        self.y.as_deref().and_then(y_to_ssrc)
    }
}

/// Reads an answer (or an offer) liberally: CRLF or LF, unknown lines and
/// attributes ignored, the first video (else any) m= line used.
pub fn parse(body: &[u8]) -> Result<Answer, SdpError> {
    let text = std::str::from_utf8(body).map_err(|_| SdpError::NotText)?;
    let mut a = Answer::default();
    let mut session_ip = None;
    let mut media_ip = None;
    // 0: session level, 1: in the chosen m= section, 2: in another m= section.
    let mut level = 0;
    let mut chosen = false;
    let mut rtpmaps: Vec<(u8, String, u32)> = Vec::new();
    let mut pts: Vec<u8> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "m" => {
                let mut it = v.split_whitespace();
                let media = it.next().unwrap_or("");
                if chosen || (media != "video" && media != "audio") {
                    level = 2;
                    continue;
                }
                if media == "audio" && text.contains("m=video") {
                    level = 2;
                    continue;
                }
                chosen = true;
                level = 1;
                let port = it.next().unwrap_or("");
                let port = port.split('/').next().unwrap_or("");
                a.port = port.parse().map_err(|_| SdpError::BadPort)?;
                a.proto = it.next().unwrap_or("").to_string();
                pts = it.filter_map(|p| p.parse().ok()).collect();
            }
            "c" if level != 2 => {
                let ip = v
                    .split_whitespace()
                    .nth(2)
                    .and_then(|s| s.split('/').next())
                    .and_then(|s| s.parse::<IpAddr>().ok());
                if level == 0 {
                    session_ip = ip;
                } else {
                    media_ip = ip;
                }
            }
            "s" if level == 0 => a.session = Some(v.to_string()),
            "y" => a.y = Some(v.to_string()),
            "f" => a.f = Some(v.to_string()),
            "a" if level != 2 => {
                if let Some(s) = v.strip_prefix("setup:") {
                    a.setup = Some(s.trim().to_ascii_lowercase());
                } else if v.starts_with("crypto:") && a.crypto.len() < 16 {
                    a.crypto.push(v.to_string());
                } else if let Some(m) = v.strip_prefix("rtpmap:") {
                    let mut it = m.split_whitespace();
                    let pt = it.next().and_then(|p| p.parse::<u8>().ok());
                    let enc = it.next().unwrap_or("");
                    let mut e = enc.split('/');
                    let name = e.next().unwrap_or("").to_string();
                    let clock = e.next().and_then(|c| c.parse().ok()).unwrap_or(90_000);
                    if let Some(pt) = pt {
                        rtpmaps.push((pt, name, clock));
                    }
                }
            }
            _ => {}
        }
    }
    if !chosen {
        return Err(SdpError::NoMedia);
    }
    a.ip = media_ip.or(session_ip);
    if a.ip.is_none() {
        return Err(SdpError::NoAddress);
    }
    a.payloads = pts
        .iter()
        .map(|pt| {
            rtpmaps
                .iter()
                .find(|(p, _, _)| p == pt)
                .cloned()
                .unwrap_or_else(|| (*pt, String::new(), 90_000))
        })
        .collect();
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn y_values() {
        // Domain 3402000000: digits 4-8 are "20000" (as WVP computes it).
        assert_eq!(ssrc_y(true, "3402000000", 1), "0200000001");
        assert_eq!(ssrc_y(false, "3402000000", 12), "1200000012");
        assert_eq!(ssrc_y(true, "3402012345", 9999), "0201239999");
        assert_eq!(y_to_ssrc("0340200001"), Some(340_200_001));
        assert_eq!(y_to_ssrc("1020000012"), Some(1_020_000_012));
        assert_eq!(y_to_ssrc("9999999999"), None);
        assert_eq!(y_to_ssrc("12a"), None);
    }

    #[test]
    fn offer_round_trips() {
        for t in [
            MediaTransport::Udp,
            MediaTransport::TcpPassive,
            MediaTransport::TcpActive,
        ] {
            let o = Offer {
                platform_id: "34020000002000000001",
                kind: SessionKind::Play,
                channel: "34020000001310000001",
                media_ip: "198.18.0.1".parse().unwrap(),
                port: 30000,
                transport: t,
                y: "0020000001",
                range: None,
                download_speed: None,
                crypto: None,
            }
            .build();
            assert!(o.contains("s=Play\r\n"));
            assert!(o.contains("y=0020000001\r\n"));
            let a = parse(o.as_bytes()).unwrap();
            assert_eq!(a.port, 30000);
            assert_eq!(a.ip, Some("198.18.0.1".parse().unwrap()));
            assert_eq!(a.tcp(), t != MediaTransport::Udp);
            assert_eq!(a.ssrc(), Some(20_000_001));
            assert_eq!(a.payloads[0], (96, "PS".to_string(), 90000));
            match t {
                MediaTransport::TcpPassive => assert_eq!(a.setup.as_deref(), Some("passive")),
                MediaTransport::TcpActive => assert_eq!(a.setup.as_deref(), Some("active")),
                MediaTransport::Udp => assert_eq!(a.setup, None),
            }
        }
    }

    #[test]
    fn device_answers_with_gb_lines() {
        let ans = "v=0\no=34020000001320000001 0 0 IN IP4 198.18.0.2\ns=Play\nc=IN IP4 198.18.0.2\nt=0 0\nm=video 15060 RTP/AVP 96\na=sendonly\na=rtpmap:96 PS/90000\ny=0020000001\nf=v/2/4/25/1/4000a///\n";
        let a = parse(ans.as_bytes()).unwrap();
        assert_eq!(a.port, 15060);
        assert_eq!(a.ssrc(), Some(20_000_001));
        assert_eq!(a.f.as_deref(), Some("v/2/4/25/1/4000a///"));
        assert_eq!(a.session.as_deref(), Some("Play"));
        // Media-level c= wins; empty f= fields kept.
        let ans = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=video 9 TCP/RTP/AVP 96 98\r\nc=IN IP4 10.0.0.2\r\na=setup:ACTIVE\r\nf=v/////a/1/8/1\r\n";
        let a = parse(ans.as_bytes()).unwrap();
        assert_eq!(a.ip, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(a.setup.as_deref(), Some("active"));
        assert_eq!(a.payloads.len(), 2);
        assert_eq!(a.f.as_deref(), Some("v/////a/1/8/1"));
    }

    #[test]
    fn unusable_answers_are_errors() {
        assert_eq!(
            parse(b"v=0\r\nc=IN IP4 1.2.3.4\r\n"),
            Err(SdpError::NoMedia)
        );
        assert_eq!(
            parse(b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=video x RTP/AVP 96\r\n"),
            Err(SdpError::BadPort)
        );
        assert_eq!(
            parse(b"v=0\r\nm=video 5 RTP/AVP 96\r\n"),
            Err(SdpError::NoAddress)
        );
        assert_eq!(parse(&[0xff, 0xfe]), Err(SdpError::NotText));
        assert_eq!(
            parse(b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=application 5 UDP x\r\n"),
            Err(SdpError::NoMedia)
        );
        for i in 0..200 {
            let s = "v=0\r\nc=IN IP4 1.2.3.4\r\nm=video 5 RTP/AVP 96\r\na=rtpmap:96 PS/90000\r\ny=01\r\n";
            if let Some(p) = s.get(..i.min(s.len())) {
                let _ = parse(p.as_bytes());
            }
        }
    }

    #[test]
    fn sdes_key_offered_and_answered() {
        let line =
            "crypto:1 SM4_CM_128_HMAC_SM3_80 inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd";
        let o = Offer {
            platform_id: "34020000002000000001",
            kind: SessionKind::Play,
            channel: "34020000001310000001",
            media_ip: "198.18.0.1".parse().unwrap(),
            port: 30000,
            transport: MediaTransport::Udp,
            y: "0020000001",
            range: None,
            download_speed: None,
            crypto: Some(line),
        }
        .build();
        assert!(o.contains("m=video 30000 RTP/SAVP 96 98 97\r\n"), "{o}");
        assert!(o.contains(&format!("a={line}\r\n")));
        let a = parse(o.as_bytes()).unwrap();
        assert_eq!(a.crypto, vec![line.to_string()]);
        // Attributes of other media sections are not taken.
        let two = "v=0\r\nc=IN IP4 198.18.0.2\r\nm=video 5000 RTP/SAVP 96\r\na=crypto:1 X inline:a\r\nm=audio 5002 RTP/SAVP 8\r\na=crypto:2 Y inline:b\r\n";
        assert_eq!(
            parse(two.as_bytes()).unwrap().crypto,
            vec!["crypto:1 X inline:a"]
        );
    }

    #[test]
    fn sender_answer_round_trips_through_the_answer_parser() {
        let body = SenderAnswer {
            id: "34020000002000000001",
            media_ip: "198.18.0.1".parse().unwrap(),
            port: 30002,
            transport: MediaTransport::Udp,
            y: "0110000001",
            f: Some("v/////a/1/8/1"),
        }
        .build();
        let a = parse(body.as_bytes()).unwrap();
        assert_eq!(a.ip, Some("198.18.0.1".parse().unwrap()));
        assert_eq!(a.port, 30002);
        assert_eq!(a.proto, "RTP/AVP");
        assert_eq!(a.ssrc(), Some(110000001));
        assert_eq!(a.f.as_deref(), Some("v/////a/1/8/1"));
        assert!(body.contains("a=sendonly\r\n"));
        let tcp = SenderAnswer {
            transport: MediaTransport::TcpActive,
            f: None,
            ..SenderAnswer {
                id: "x",
                media_ip: "::1".parse().unwrap(),
                port: 9,
                transport: MediaTransport::Udp,
                y: "0000000001",
                f: None,
            }
        }
        .build();
        let a = parse(tcp.as_bytes()).unwrap();
        assert!(a.tcp());
        assert_eq!(a.setup.as_deref(), Some("active"));
        assert!(tcp.contains("c=IN IP6 ::1\r\n"));
    }

    #[test]
    fn playback_and_download_offers() {
        let mut o = Offer {
            platform_id: "34020000002000000001",
            kind: SessionKind::Download,
            channel: "34020000001310000001",
            media_ip: "198.18.0.1".parse().unwrap(),
            port: 30002,
            transport: MediaTransport::Udp,
            y: "1020000001",
            range: Some((1_796_601_600, 1_796_601_660)),
            download_speed: Some(4),
            crypto: None,
        };
        let b = o.build();
        assert!(
            b.contains("s=Download\r\nu=34020000001310000001:0\r\n"),
            "{b}"
        );
        assert!(b.contains("t=1796601600 1796601660\r\n"), "{b}");
        assert!(b.contains("a=downloadspeed:4\r\n"), "{b}");
        o.kind = SessionKind::Playback;
        let b = o.build();
        assert!(
            b.contains("s=Playback\r\n") && !b.contains("downloadspeed"),
            "{b}"
        );
    }
}
