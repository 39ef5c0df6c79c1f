//! SIP messages as bytes on the wire, before and around rsip.
//!
//! rsip 0.4 parses well-formed RFC 3261 messages, but GB/T 28181 devices
//! send things it does not take, so every message goes through
//! [`normalize`] first:
//! - bare-LF line endings (rsip needs CRLF);
//! - folded header lines (continuation lines starting with SP/HT);
//! - compact header names (`v`, `f`, `t`, `i`, `m`, `l`, `c`, `k`, `s`, `e`)
//!   which rsip keeps as unknown headers;
//! - a Content-Length that disagrees with the datagram (RFC 3261 18.3:
//!   extra bytes are discarded, a short body is an error);
//! - methods rsip does not know (it fails the whole parse), which must be
//!   answered 501, not dropped.
//!
//! Also here: TCP framing by Content-Length ([`frame_len`]) and a minimal
//! response built from raw header lines ([`raw_response`]) for requests that
//! cannot be parsed but still deserve an answer (400, 501, 513).

use thiserror::Error;

/// Largest message accepted by default (UDP datagrams cannot be bigger;
/// TCP messages are held to the same limit).
pub const DEFAULT_MAX_MESSAGE: usize = 65_535;

/// Methods rsip 0.4 parses; anything else gets 501.
pub const KNOWN_METHODS: &[&str] = &[
    "REGISTER",
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "INFO",
    "MESSAGE",
    "NOTIFY",
    "OPTIONS",
    "PRACK",
    "PUBLISH",
    "REFER",
    "SUBSCRIBE",
    "UPDATE",
];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    #[error("no end of headers")]
    Incomplete,
    #[error("bad start line")]
    StartLine,
    #[error("bad header line")]
    HeaderLine,
    #[error("bad Content-Length")]
    ContentLength,
    #[error("body shorter than Content-Length ({have} < {want})")]
    ShortBody { have: usize, want: usize },
    #[error("unknown method {0}")]
    UnknownMethod(String),
    #[error("rsip: {0}")]
    Parse(String),
}

impl WireError {
    /// Short stable label (metrics).
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::TooLarge(_) => "too_large",
            WireError::Incomplete => "incomplete",
            WireError::StartLine => "start_line",
            WireError::HeaderLine => "header_line",
            WireError::ContentLength => "content_length",
            WireError::ShortBody { .. } => "short_body",
            WireError::UnknownMethod(_) => "unknown_method",
            WireError::Parse(_) => "parse",
        }
    }

    /// The SIP status a request failing this way is answered with.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            WireError::TooLarge(_) => (513, "Message Too Large"),
            WireError::UnknownMethod(_) => (501, "Not Implemented"),
            _ => (400, "Bad Request"),
        }
    }
}

/// Where the header section ends: (index of the first body byte, length of
/// the blank-line terminator). Accepts CRLFCRLF and LFLF (and mixes).
pub fn header_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            // A blank line follows if the next line is empty: "\n\n" or "\n\r\n".
            match buf.get(i + 1) {
                Some(b'\n') => return Some(i + 2),
                Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// The full names of the RFC 3261 compact forms.
fn expand_compact(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "v" => "Via",
        "f" => "From",
        "t" => "To",
        "i" => "Call-ID",
        "m" => "Contact",
        "l" => "Content-Length",
        "c" => "Content-Type",
        "k" => "Supported",
        "s" => "Subject",
        "e" => "Content-Encoding",
        _ => return None,
    })
}

/// Header lines of a head section (start line excluded), unfolded, without
/// line terminators.
fn header_lines(head: &str) -> Result<(String, Vec<String>), WireError> {
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start = lines.next().ok_or(WireError::StartLine)?.to_string();
    let mut out: Vec<String> = Vec::new();
    for l in lines {
        if l.is_empty() {
            continue;
        }
        if l.starts_with([' ', '\t']) {
            let last = out.last_mut().ok_or(WireError::HeaderLine)?;
            last.push(' ');
            last.push_str(l.trim());
        } else {
            out.push(l.to_string());
        }
    }
    Ok((start, out))
}

/// Splits `Name: value` (value trimmed).
pub fn split_header(line: &str) -> Option<(&str, &str)> {
    let (n, v) = line.split_once(':')?;
    let n = n.trim();
    if n.is_empty() || n.contains(' ') {
        return None;
    }
    Some((n, v.trim()))
}

/// A message ready for rsip, plus what normalisation learnt.
#[derive(Debug)]
pub struct Normalized {
    /// CRLF-terminated, unfolded headers with full names, then the body
    /// cut to Content-Length.
    pub bytes: Vec<u8>,
    /// Byte offset of the body in `bytes`.
    pub body_at: usize,
    /// True if any rewrite was needed (the input was not plain RFC 3261).
    pub rewritten: bool,
}

/// Parses the start line's method if this is a request.
pub fn request_method(start: &str) -> Option<&str> {
    if start.starts_with("SIP/") {
        return None;
    }
    start.split(' ').next()
}

/// Rewrites a received datagram / framed TCP message into what rsip takes.
pub fn normalize(raw: &[u8], max: usize) -> Result<Normalized, WireError> {
    if raw.len() > max {
        return Err(WireError::TooLarge(max));
    }
    // Leading CRLFs are allowed before a message (RFC 3261 7.5).
    let start = raw
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .ok_or(WireError::StartLine)?;
    let raw = &raw[start..];
    let hend = header_end(raw).ok_or(WireError::Incomplete)?;
    let head = std::str::from_utf8(&raw[..hend]).map_err(|_| WireError::HeaderLine)?;
    let body = &raw[hend..];
    let (start_line, lines) = header_lines(head)?;
    let mut parts = start_line.split(' ');
    let (a, b) = (parts.next(), parts.next());
    let is_response = start_line.starts_with("SIP/");
    match (is_response, a, b) {
        (true, Some(_), Some(code)) if code.len() == 3 && code.parse::<u16>().is_ok() => {}
        (false, Some(m), Some(_)) if !m.is_empty() && start_line.ends_with("SIP/2.0") => {
            if !KNOWN_METHODS.contains(&m) {
                return Err(WireError::UnknownMethod(m.chars().take(32).collect()));
            }
        }
        _ => return Err(WireError::StartLine),
    }
    let mut rewritten = head.contains("\n ") || head.contains("\n\t");
    let mut content_length: Option<usize> = None;
    let mut out = Vec::with_capacity(raw.len() + 64);
    out.extend_from_slice(start_line.as_bytes());
    out.extend_from_slice(b"\r\n");
    for l in &lines {
        let (name, value) = split_header(l).ok_or(WireError::HeaderLine)?;
        let name = match expand_compact(name) {
            Some(full) => {
                rewritten = true;
                full
            }
            None => name,
        };
        if name.eq_ignore_ascii_case("Content-Length") {
            if content_length.is_some() {
                return Err(WireError::ContentLength);
            }
            content_length = Some(value.parse().map_err(|_| WireError::ContentLength)?);
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head.ends_with("\r\n\r\n") || head.matches('\n').count() != head.matches("\r\n").count() {
        rewritten = true;
    }
    let body_at = out.len();
    let body = match content_length {
        Some(n) if n > body.len() => {
            return Err(WireError::ShortBody {
                have: body.len(),
                want: n,
            })
        }
        Some(n) => {
            if n < body.len() {
                rewritten = true;
            }
            &body[..n]
        }
        None => body,
    };
    out.extend_from_slice(body);
    Ok(Normalized {
        bytes: out,
        body_at,
        rewritten,
    })
}

/// Parses a datagram or framed message into an rsip message.
pub fn parse(raw: &[u8], max: usize) -> Result<rsip::SipMessage, WireError> {
    let n = normalize(raw, max)?;
    rsip::SipMessage::try_from(&n.bytes[..])
        .map_err(|e| WireError::Parse(e.to_string().chars().take(160).collect()))
}

/// The reason phrase of a response's status line as sent (rsip prints its
/// own enum names instead).
pub fn reason_phrase(raw: &[u8]) -> Option<String> {
    let end = raw.iter().position(|b| *b == b'\n').unwrap_or(raw.len());
    let line = std::str::from_utf8(&raw[..end])
        .ok()?
        .trim_end_matches('\r');
    let rest = line.strip_prefix("SIP/2.0 ")?;
    let (_code, reason) = rest.split_once(' ')?;
    Some(reason.chars().take(128).collect())
}

/// TCP framing (RFC 3261 18.3): how many bytes of `buf` make the first
/// message. `Ok(None)`: need more bytes. Leading CRLFs (keep-alive pings,
/// RFC 5626) are part of the frame and yield an empty message to skip.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, WireError> {
    let skip = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    if skip > 0 {
        return Ok(Some(skip));
    }
    let Some(hend) = header_end(buf) else {
        if buf.len() > max {
            return Err(WireError::TooLarge(max));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..hend]).map_err(|_| WireError::HeaderLine)?;
    let mut len = 0usize;
    for l in head.split('\n').skip(1) {
        if let Some((n, v)) = split_header(l.trim_end_matches('\r')) {
            if n.eq_ignore_ascii_case("Content-Length") || n.eq_ignore_ascii_case("l") {
                len = v.parse().map_err(|_| WireError::ContentLength)?;
            }
        }
    }
    let total = hend.checked_add(len).ok_or(WireError::ContentLength)?;
    if total > max {
        return Err(WireError::TooLarge(max));
    }
    Ok((buf.len() >= total).then_some(total))
}

/// A response to a request that could not be parsed, from its raw header
/// lines: copies Via, From, To, Call-ID and CSeq (expanded from compact
/// forms). `None` if the request lacks any of them (nothing to answer to).
pub fn raw_response(raw: &[u8], code: u16, reason: &str) -> Option<Vec<u8>> {
    let hend = header_end(raw).unwrap_or(raw.len().min(DEFAULT_MAX_MESSAGE));
    let head = String::from_utf8_lossy(&raw[..hend]);
    let (start, lines) = header_lines(&head).ok()?;
    if start.starts_with("SIP/") {
        return None; // never answer a response
    }
    let mut vias = Vec::new();
    let (mut from, mut to, mut call_id, mut cseq) = (None, None, None, None);
    for l in &lines {
        let Some((n, v)) = split_header(l) else {
            continue;
        };
        let n = expand_compact(n).unwrap_or(n);
        match n.to_ascii_lowercase().as_str() {
            "via" => vias.push(v.to_string()),
            "from" => from = Some(v.to_string()),
            "to" => to = Some(v.to_string()),
            "call-id" => call_id = Some(v.to_string()),
            "cseq" => cseq = Some(v.to_string()),
            _ => {}
        }
    }
    if vias.is_empty() {
        return None;
    }
    let (from, mut to, call_id, cseq) = (from?, to?, call_id?, cseq?);
    if !to.contains(";tag=") {
        to.push_str(";tag=gw");
    }
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for v in vias {
        out.push_str(&format!("Via: {v}\r\n"));
    }
    out.push_str(&format!(
        "From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\n"
    ));
    if code == 501 {
        out.push_str(
            "Allow: REGISTER, MESSAGE, INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, NOTIFY\r\n",
        );
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    Some(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsip::prelude::*;

    const REG: &str = "REGISTER sip:34020000002000000001@3402000000 SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.64:5060;rport;branch=z9hG4bK1\r\nFrom: <sip:34020000001320000001@3402000000>;tag=1\r\nTo: <sip:34020000001320000001@3402000000>\r\nCall-ID: 1\r\nCSeq: 1 REGISTER\r\nContact: <sip:34020000001320000001@192.168.1.64:5060>\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn plain_messages_pass_untouched() {
        let n = normalize(REG.as_bytes(), DEFAULT_MAX_MESSAGE).unwrap();
        assert!(!n.rewritten);
        assert_eq!(n.bytes, REG.as_bytes());
        assert!(parse(REG.as_bytes(), DEFAULT_MAX_MESSAGE).is_ok());
    }

    #[test]
    fn bare_lf_folding_and_compact_forms() {
        let raw = "MESSAGE sip:a@3402000000 SIP/2.0\nv: SIP/2.0/UDP 1.2.3.4:5060;branch=z9hG4bK2\nf: <sip:x@y>;tag=1\nt: <sip:a@b>\ni: 9\nCSeq: 1 MESSAGE\nSubject: a\n  b\nc: Application/MANSCDP+xml\nl: 4\n\n<x/>trailing";
        let m = parse(raw.as_bytes(), DEFAULT_MAX_MESSAGE).unwrap();
        let rsip::SipMessage::Request(r) = m else {
            panic!("request expected")
        };
        assert_eq!(r.call_id_header().unwrap().value(), "9");
        assert!(r.via_header().is_ok());
        assert_eq!(r.body(), b"<x/>");
        let n = normalize(raw.as_bytes(), DEFAULT_MAX_MESSAGE).unwrap();
        assert!(n.rewritten);
        assert!(String::from_utf8_lossy(&n.bytes).contains("Subject: a b\r\n"));
    }

    #[test]
    fn errors_map_to_statuses() {
        let unknown = REG.replace("REGISTER sip", "FOO sip");
        let e = parse(unknown.as_bytes(), DEFAULT_MAX_MESSAGE).unwrap_err();
        assert_eq!(e, WireError::UnknownMethod("FOO".into()));
        assert_eq!(e.status().0, 501);
        let r =
            String::from_utf8(raw_response(unknown.as_bytes(), 501, "Not Implemented").unwrap())
                .unwrap();
        assert!(r.starts_with("SIP/2.0 501 Not Implemented\r\n"));
        assert!(r.contains("Via: SIP/2.0/UDP 192.168.1.64:5060;rport;branch=z9hG4bK1\r\n"));
        assert!(r.contains("CSeq: 1 REGISTER\r\n"));
        assert!(r.contains("To: <sip:34020000001320000001@3402000000>;tag=gw\r\n"));

        let short = REG.replace("Content-Length: 0", "Content-Length: 10");
        assert_eq!(
            parse(short.as_bytes(), DEFAULT_MAX_MESSAGE).unwrap_err(),
            WireError::ShortBody { have: 0, want: 10 }
        );
        let big = vec![b'a'; 70_000];
        assert_eq!(
            parse(&big, DEFAULT_MAX_MESSAGE).unwrap_err().status().0,
            513
        );
        assert_eq!(
            parse(b"hello\r\n\r\n", DEFAULT_MAX_MESSAGE).unwrap_err(),
            WireError::StartLine
        );
        assert_eq!(
            parse(
                b"REGISTER sip:a SIP/2.0\r\nVia x\r\n\r\n",
                DEFAULT_MAX_MESSAGE
            )
            .unwrap_err(),
            WireError::HeaderLine
        );
        // Responses are never answered.
        assert!(raw_response(b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n", 400, "Bad Request").is_none());
    }

    #[test]
    fn reason_phrases_as_sent() {
        assert_eq!(
            reason_phrase(b"SIP/2.0 486 Busy Here\r\nVia: x\r\n").as_deref(),
            Some("Busy Here")
        );
        assert_eq!(reason_phrase(b"REGISTER sip:a SIP/2.0\r\n"), None);
        assert_eq!(reason_phrase(b"SIP/2.0 200"), None);
    }

    #[test]
    fn tcp_framing() {
        let two = format!(
            "\r\n\r\n{REG}{}",
            REG.replace("Content-Length: 0", "l: 3") + "abc"
        );
        let b = two.as_bytes();
        assert_eq!(frame_len(b, DEFAULT_MAX_MESSAGE).unwrap(), Some(4));
        let b = &b[4..];
        let first = frame_len(b, DEFAULT_MAX_MESSAGE).unwrap().unwrap();
        assert_eq!(&b[..first], REG.as_bytes());
        let rest = &b[first..];
        assert_eq!(
            frame_len(rest, DEFAULT_MAX_MESSAGE).unwrap(),
            Some(rest.len())
        );
        assert_eq!(
            frame_len(&rest[..rest.len() - 1], DEFAULT_MAX_MESSAGE).unwrap(),
            None
        );
        let huge = REG.replace("Content-Length: 0", "Content-Length: 999999");
        assert_eq!(
            frame_len(huge.as_bytes(), DEFAULT_MAX_MESSAGE).unwrap_err(),
            WireError::TooLarge(DEFAULT_MAX_MESSAGE)
        );
        assert_eq!(
            frame_len(&vec![b'x'; 70_000], DEFAULT_MAX_MESSAGE)
                .unwrap_err()
                .status()
                .0,
            513
        );
    }

    #[test]
    fn long_rsip_errors_with_multibyte_text_are_cut_safely() {
        // Found by the sip_message fuzz target: the error text was cut at
        // a byte index inside a UTF-8 character.
        let raw = format!(
            "REGISTER sip:a@b SIP/2.0\r\nVia: {}\r\n\r\n",
            "é".repeat(200)
        );
        let _ = parse(raw.as_bytes(), DEFAULT_MAX_MESSAGE);
        let raw = format!(
            "REGISTER sip:{}@b SIP/2.0\r\nVia: x\r\n\r\n",
            "中".repeat(100)
        );
        let _ = parse(raw.as_bytes(), DEFAULT_MAX_MESSAGE);
    }

    #[test]
    fn fuzz_regressions_replay() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/regressions/sip_message"
        );
        let mut n = 0;
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let data = std::fs::read(e.path()).unwrap();
            let _ = parse(&data, DEFAULT_MAX_MESSAGE);
            let _ = frame_len(&data, DEFAULT_MAX_MESSAGE);
            let _ = raw_response(&data, 400, "Bad Request");
            n += 1;
        }
        assert!(n >= 2, "regression inputs missing from {dir}");
    }

    #[test]
    fn every_prefix_is_handled() {
        let raw = format!(
            "{}<x/>",
            REG.replace("Content-Length: 0", "Content-Length: 4")
        );
        for i in 0..raw.len() {
            let _ = parse(&raw.as_bytes()[..i], DEFAULT_MAX_MESSAGE);
            let _ = frame_len(&raw.as_bytes()[..i], DEFAULT_MAX_MESSAGE);
            let _ = raw_response(&raw.as_bytes()[..i], 400, "Bad Request");
        }
    }
}
