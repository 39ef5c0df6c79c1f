//! A raw SIP client over UDP for tests that send what sipp would not
//! (malformed or flooding requests), playing GB28181 devices.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use gb28181::{digest::Challenge, sip::Head, wire};

use crate::sipp::{DOMAIN, PLATFORM};

pub struct Client {
    pub sock: UdpSocket,
    gw: SocketAddr,
    cseq: std::cell::Cell<u32>,
}

impl Client {
    pub fn new(gw: SocketAddr) -> Client {
        Client::bound(std::net::IpAddr::from([127, 0, 0, 1]), gw)
    }

    /// A client on `ip` (the address it puts in Via and Contact).
    pub fn bound(ip: std::net::IpAddr, gw: SocketAddr) -> Client {
        let sock = UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Client {
            sock,
            gw,
            cseq: std::cell::Cell::new(0),
        }
    }

    /// With a read timeout of `t` instead of 3 s.
    pub fn timeout(self, t: Duration) -> Client {
        self.sock.set_read_timeout(Some(t)).unwrap();
        self
    }

    pub fn local(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// Sends raw bytes; returns the first response (requests from the
    /// gateway, e.g. its catalog queries, are skipped), or None.
    pub fn send(&self, raw: &[u8]) -> Option<Head> {
        self.sock.send_to(raw, self.gw).unwrap();
        self.recv()
    }

    /// The next response (requests are skipped), or None on timeout.
    pub fn recv(&self) -> Option<Head> {
        loop {
            let h = self.recv_any()?;
            if h.status.is_some() {
                return Some(h);
            }
        }
    }

    /// The next message, request or response, or None on timeout.
    pub fn recv_any(&self) -> Option<Head> {
        let mut buf = vec![0u8; 65536];
        let (n, _) = self.sock.recv_from(&mut buf).ok()?;
        let m = wire::parse(&buf[..n], 65535).expect("gateway sent unparseable SIP");
        Some(Head::parse(&m).expect("gateway sent bad headers"))
    }

    /// Answers the gateway's request `req` with `code` and `reason`, To tag
    /// `tag`, and an SDP body if given.
    pub fn answer(&self, req: &Head, code: u16, reason: &str, tag: &str, sdp: Option<&str>) {
        let body = sdp.map(|s| ("application/sdp", s.as_bytes()));
        let r = gb28181::sip::response(req, self.gw, code, reason, tag, &[], body);
        self.sock.send_to(&r, self.gw).unwrap();
    }

    pub fn register(
        &self,
        dev: &str,
        auth: Option<&str>,
        expires: Option<u32>,
        uri: &str,
    ) -> Vec<u8> {
        self.cseq.set(self.cseq.get() + 1);
        let mut s = format!(
            "REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {l};rport;branch=z9hG4bK{b}\r\nFrom: <sip:{dev}@{DOMAIN}>;tag=f{dev}\r\nTo: <sip:{dev}@{DOMAIN}>\r\nCall-ID: reg-{dev}\r\nCSeq: {c} REGISTER\r\nContact: <sip:{dev}@{l}>\r\nMax-Forwards: 70\r\n",
            l = self.local(),
            b = gb28181::sip::token(12),
            c = self.cseq.get()
        );
        if let Some(e) = expires {
            s.push_str(&format!("Expires: {e}\r\n"));
        }
        if let Some(a) = auth {
            s.push_str(&format!("Authorization: {a}\r\n"));
        }
        s.push_str("Content-Length: 0\r\n\r\n");
        s.into_bytes()
    }

    pub fn message(&self, dev: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
        self.cseq.set(self.cseq.get() + 1);
        let mut s = format!(
            "MESSAGE sip:{PLATFORM}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {l};rport;branch=z9hG4bK{b}\r\nFrom: <sip:{dev}@{DOMAIN}>;tag=m{dev}\r\nTo: <sip:{PLATFORM}@{DOMAIN}>\r\nCall-ID: msg-{dev}-{c}\r\nCSeq: {c} MESSAGE\r\nContent-Type: {content_type}\r\nContent-Length: {n}\r\n\r\n",
            l = self.local(),
            b = gb28181::sip::token(12),
            c = self.cseq.get(),
            n = body.len()
        )
        .into_bytes();
        s.extend_from_slice(body);
        s
    }

    /// 401 then an authenticated REGISTER; returns the final status.
    pub fn login(&self, dev: &str, password: &str) -> u16 {
        let uri = format!("sip:{PLATFORM}@{DOMAIN}");
        let r = self
            .send(&self.register(dev, None, Some(3600), &uri))
            .unwrap();
        assert_eq!(r.status, Some(401));
        let ch = Challenge::parse(r.www_authenticate.as_deref().unwrap()).unwrap();
        let creds = ch.answer(dev, password, "REGISTER", &uri, 1, "c0ffee");
        let req = self.register(dev, Some(&creds.to_header()), Some(3600), &uri);
        self.send(&req).unwrap().status.unwrap()
    }
}
