//! Media of a live session: receive RTP (UDP, or RFC 4571 over TCP with
//! the gateway listening or connecting), account it per SSRC, reorder,
//! demux PS (or depacketize raw H.264/H.265) into access units, and record
//! them (Annex-B elementary stream and/or the original PS), rotating files
//! by size or time.
//!
//! [`Pipeline`] is the synchronous part (one packet in, frames to the
//! sinks), unit-tested here; [`start`] runs it on a socket in a task.
//! Encrypted media is decrypted on the way ([`crypto`]): SRTP before the
//! packet is accounted, NAL units after the demuxer; recorder and
//! forwarders get clear media only.

pub mod crypto;

use std::{
    fs::File,
    io::{BufWriter, Write},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use gb28181::sdp::MediaTransport;
use media::{
    framing::Rfc4571Decoder,
    h26x::Depacketizer,
    ps::PsDemuxer,
    rtp::{self, Released, Reorder, SeqStats},
    Codec, Frame, FrameKind,
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream, UdpSocket},
    sync::oneshot,
};
use tracing::{info, warn};

use crate::{keys::KeyView, registry::wall_ms};
use crypto::{DecryptStats, StreamCrypto};
use gb35114::srtp::{MasterKey, SrtpSender};
use media::ps::PsMuxer;

/// `[record]`: where and how sessions are recorded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// Write the elementary stream (Annex-B .h264/.h265).
    #[serde(default = "yes")]
    pub es: bool,
    /// Write the original PS byte stream (.ps).
    #[serde(default)]
    pub ps: bool,
    /// Start a new file (at the next key frame) beyond this size; 0 = never.
    #[serde(default = "default_max_bytes")]
    pub max_file_bytes: u64,
    /// ... or beyond this age in seconds; 0 = never.
    #[serde(default)]
    pub max_file_secs: u64,
}

fn default_dir() -> PathBuf {
    PathBuf::from("/var/lib/gateway/records")
}
fn yes() -> bool {
    true
}
fn default_max_bytes() -> u64 {
    1 << 30
}

impl Default for RecordConfig {
    fn default() -> Self {
        RecordConfig {
            dir: default_dir(),
            es: true,
            ps: false,
            max_file_bytes: default_max_bytes(),
            max_file_secs: 0,
        }
    }
}

/// What a session's media did (shown in the stream API).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MediaStats {
    pub packets: u64,
    pub bytes: u64,
    pub lost: u64,
    pub out_of_order: u64,
    pub duplicates: u64,
    /// Interarrival jitter (RFC 3550 A.8), milliseconds.
    pub jitter_ms: f64,
    pub frames: u64,
    pub keyframes: u64,
    /// SSRC of the media received.
    pub ssrc: Option<u32>,
    /// Packets under another SSRC than the session asked for.
    pub ssrc_mismatches: u64,
    /// Datagrams (or TCP packets) that are not RTP.
    pub garbage: u64,
    /// PS resynchronisations and dropped (damaged or oversized) frames.
    pub ps_resyncs: u64,
    pub dropped_frames: u64,
    pub codec: Option<String>,
    pub last_packet_ms: Option<i64>,
    /// Files written (current last).
    pub files: Vec<String>,
    /// TCP: peer of the media connection.
    pub peer: Option<String>,
    /// Forwarding destinations and what was sent to each.
    pub forwards: Vec<ForwardStats>,
    /// Decryption (SM4 profiles): what was decrypted, what failed and why.
    pub decrypt: DecryptStats,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ForwardStats {
    pub dest: String,
    pub ssrc: u32,
    pub packets: u64,
    pub bytes: u64,
    pub errors: u64,
    /// Re-encrypted with srtp-sm4: the key's check value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub srtp: Option<String>,
    /// "relay" (payloads as received) or "remux" (PS re-muxed from the
    /// decrypted frames).
    pub mode: &'static str,
}

/// Re-sends the stream's RTP payloads (PS or raw, as received, in order)
/// to a destination under its own SSRC and sequence numbers.
pub struct Forward {
    sock: std::net::UdpSocket,
    dest: SocketAddr,
    ssrc: u32,
    seq: u16,
    stats: ForwardStats,
    srtp: Option<SrtpSender>,
    enc_buf: Vec<u8>,
}

impl Forward {
    pub fn new(dest: SocketAddr, ssrc: u32) -> std::io::Result<Forward> {
        let bind: SocketAddr = if dest.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = std::net::UdpSocket::bind(bind)?;
        sock.set_nonblocking(true)?;
        Ok(Forward {
            sock,
            dest,
            ssrc,
            seq: (ssrc as u16) ^ 0x5a5a,
            stats: ForwardStats {
                dest: dest.to_string(),
                ssrc,
                mode: "relay",
                ..ForwardStats::default()
            },
            srtp: None,
            enc_buf: Vec::new(),
        })
    }

    /// Sends srtp-sm4 (this master key) instead of RTP.
    pub fn with_srtp(mut self, key: &MasterKey) -> Forward {
        self.stats.srtp = Some(key.check_value());
        self.srtp = Some(SrtpSender::new(key));
        self
    }

    fn send(&mut self, pt: u8, ts: u32, marker: bool, payload: &[u8], buf: &mut Vec<u8>) {
        buf.clear();
        rtp::RtpHeader {
            marker,
            pt,
            seq: self.seq,
            ts,
            ssrc: self.ssrc,
        }
        .write(buf);
        buf.extend_from_slice(payload);
        self.seq = self.seq.wrapping_add(1);
        let wire: &[u8] = match &mut self.srtp {
            Some(tx) => {
                self.enc_buf.clear();
                if tx.protect(buf, &mut self.enc_buf).is_err() {
                    self.stats.errors += 1;
                    return;
                }
                &self.enc_buf
            }
            None => buf,
        };
        match self.sock.send_to(wire, self.dest) {
            Ok(n) => {
                self.stats.packets += 1;
                self.stats.bytes += n as u64;
            }
            Err(_) => self.stats.errors += 1,
        }
    }
}

fn codec_name(c: Codec) -> &'static str {
    match c {
        Codec::H264 => "h264",
        Codec::H265 => "h265",
        Codec::Mpeg4 => "mpeg4",
        Codec::Svac => "svac",
        Codec::G711A => "g711a",
        Codec::G711U => "g711u",
        Codec::Aac => "aac",
        Codec::Unknown(_) => "unknown",
    }
}

struct OpenFile {
    w: BufWriter<File>,
    bytes: u64,
    started: Instant,
}

/// Writes frames (and/or PS) to rotating files.
pub struct Recorder {
    cfg: RecordConfig,
    base: String,
    es: Option<OpenFile>,
    ps: Option<OpenFile>,
    pub files: Vec<String>,
    rotate_pending: bool,
}

impl Recorder {
    pub fn new(cfg: RecordConfig, base: &str) -> std::io::Result<Recorder> {
        std::fs::create_dir_all(&cfg.dir)?;
        Ok(Recorder {
            cfg,
            base: base.to_string(),
            es: None,
            ps: None,
            files: Vec::new(),
            rotate_pending: false,
        })
    }

    fn open(&mut self, ext: &str) -> std::io::Result<OpenFile> {
        let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S%.3f");
        let mut path = self.cfg.dir.join(format!("{}_{stamp}.{ext}", self.base));
        let mut n = 1;
        while path.exists() {
            path = self
                .cfg
                .dir
                .join(format!("{}_{stamp}-{n}.{ext}", self.base));
            n += 1;
        }
        let f = File::create(&path)?;
        self.files.push(path.display().to_string());
        Ok(OpenFile {
            w: BufWriter::with_capacity(256 * 1024, f),
            bytes: 0,
            started: Instant::now(),
        })
    }

    fn due(&self, f: &OpenFile) -> bool {
        (self.cfg.max_file_bytes > 0 && f.bytes >= self.cfg.max_file_bytes)
            || (self.cfg.max_file_secs > 0
                && f.started.elapsed() >= Duration::from_secs(self.cfg.max_file_secs))
    }

    /// An access unit; a new file starts at a key frame once one is due.
    pub fn frame(&mut self, f: &Frame) -> std::io::Result<()> {
        if !self.cfg.es || f.kind != FrameKind::Video {
            return Ok(());
        }
        if let Some(o) = &self.es {
            if self.due(o) {
                self.rotate_pending = true;
            }
        }
        if self.rotate_pending && f.keyframe {
            if let Some(mut o) = self.es.take() {
                o.w.flush()?;
            }
            self.rotate_pending = false;
        }
        if self.es.is_none() {
            if !f.keyframe && self.files.is_empty() {
                // A decodable file starts with a key frame.
                return Ok(());
            }
            let ext = match f.codec {
                Codec::H265 => "h265",
                Codec::H264 => "h264",
                _ => "es",
            };
            self.es = Some(self.open(ext)?);
        }
        if let Some(o) = &mut self.es {
            o.w.write_all(&f.data)?;
            o.bytes += f.data.len() as u64;
        }
        Ok(())
    }

    /// The PS bytes as received (RTP payloads in order).
    pub fn ps(&mut self, payload: &[u8]) -> std::io::Result<()> {
        if !self.cfg.ps {
            return Ok(());
        }
        let rotate = self.ps.as_ref().is_some_and(|o| self.due(o));
        if rotate {
            if let Some(mut o) = self.ps.take() {
                o.w.flush()?;
            }
        }
        if self.ps.is_none() {
            self.ps = Some(self.open("ps")?);
        }
        if let Some(o) = &mut self.ps {
            o.w.write_all(payload)?;
            o.bytes += payload.len() as u64;
        }
        Ok(())
    }

    pub fn close(&mut self) -> std::io::Result<()> {
        for o in [self.es.take(), self.ps.take()].into_iter().flatten() {
            let mut o = o;
            o.w.flush()?;
        }
        Ok(())
    }
}

/// Receive-side processing of one stream, independent of the socket.
pub struct Pipeline {
    expected_ssrc: Option<u32>,
    seq: Option<SeqStats>,
    reorder: Reorder<Vec<u8>>,
    released: Vec<Released<Vec<u8>>>,
    ps: PsDemuxer,
    raw: Option<Depacketizer>,
    /// The payload kind was configured, not guessed.
    forced: bool,
    forwards: Vec<Forward>,
    fwd_buf: Vec<u8>,
    pub recorder: Option<Recorder>,
    pub stats: MediaStats,
    /// Reasons already logged (once per stream, not per packet).
    logged: u32,
    id: String,
    crypto: StreamCrypto,
    clear_buf: Vec<u8>,
    /// PS muxer for forwarding decrypted frames (sm4-nal-ofb streams).
    remux: Option<PsMuxer>,
    remux_buf: Vec<u8>,
}

const LOG_GARBAGE: u32 = 1;
const LOG_SSRC: u32 = 2;
const LOG_IO: u32 = 4;
const LOG_PS: u32 = 8;
const LOG_DECRYPT: u32 = 16;

impl Pipeline {
    /// The payload is fixed instead of guessed from the payload type:
    /// "ps", "h264" (RFC 6184) or "h265" (RFC 7798).
    pub fn with_payload(mut self, payload: &str) -> Pipeline {
        self.forced = true;
        self.raw = match payload {
            "h264" => Some(Depacketizer::h264()),
            "h265" => Some(Depacketizer::h265()),
            _ => None,
        };
        self
    }

    /// Forwarding sinks.
    pub fn with_forwards(mut self, f: Vec<Forward>) -> Pipeline {
        self.forwards = f;
        self
    }

    /// Decryption keys of the stream's channel; `srtp`: the packets are
    /// srtp-sm4. (Without keys, encrypted units are still recognised,
    /// counted as "no_key" and dropped.)
    pub fn with_keys(mut self, keys: Option<KeyView>, srtp: bool) -> Pipeline {
        self.crypto = StreamCrypto::new(keys, srtp);
        self
    }

    pub fn new(id: &str, expected_ssrc: Option<u32>, recorder: Option<Recorder>) -> Pipeline {
        Pipeline {
            expected_ssrc,
            seq: None,
            reorder: Reorder::new(32, 100_000_000),
            released: Vec::new(),
            ps: PsDemuxer::new(),
            raw: None,
            forced: false,
            forwards: Vec::new(),
            fwd_buf: Vec::with_capacity(1500),
            recorder,
            stats: MediaStats::default(),
            logged: 0,
            id: id.to_string(),
            crypto: StreamCrypto::new(None, false),
            clear_buf: Vec::with_capacity(1500),
            remux: None,
            remux_buf: Vec::new(),
        }
    }

    fn once(&mut self, what: u32) -> bool {
        let first = self.logged & what == 0;
        self.logged |= what;
        first
    }

    /// One RTP (or SRTP) packet as received, at `now_ns` (monotonic).
    pub fn packet(&mut self, buf: &[u8], now_ns: u64) {
        if !self.crypto.srtp() || rtp::parse(buf).is_err() {
            return self.packet_clear(buf, now_ns);
        }
        let mut clear = std::mem::take(&mut self.clear_buf);
        match self.crypto.unprotect(buf, &mut clear) {
            Ok(()) => self.packet_clear(&clear, now_ns),
            Err(f) => {
                if self.once(LOG_DECRYPT) {
                    warn!(stream = %self.id, reason = f.as_str(), "SRTP packet not decrypted (counted; logged once)");
                }
            }
        }
        self.clear_buf = clear;
    }

    fn packet_clear(&mut self, buf: &[u8], now_ns: u64) {
        let p = match rtp::parse(buf) {
            Ok(p) => p,
            Err(e) => {
                self.stats.garbage += 1;
                if self.once(LOG_GARBAGE) {
                    warn!(stream = %self.id, error = %e, len = buf.len(), "non-RTP data on the media port (logged once)");
                }
                return;
            }
        };
        if self.stats.ssrc.is_none() {
            self.stats.ssrc = Some(p.ssrc);
        }
        if self.expected_ssrc.is_some_and(|e| e != p.ssrc) {
            self.stats.ssrc_mismatches += 1;
            if self.once(LOG_SSRC) {
                warn!(stream = %self.id, expected = ?self.expected_ssrc, got = p.ssrc, "media under another SSRC; taken by port (logged once)");
            }
        }
        let seq = self.seq.get_or_insert_with(|| SeqStats::new(90_000));
        seq.record(p.sequence, p.timestamp, buf.len(), now_ns);
        self.stats.packets = seq.packets();
        self.stats.bytes = seq.bytes();
        self.stats.lost = seq.lost();
        self.stats.out_of_order = seq.out_of_order();
        self.stats.duplicates = seq.duplicates();
        self.stats.jitter_ms = seq.jitter() / 90.0;
        self.stats.last_packet_ms = Some(wall_ms());
        // Raw H.264/H.265 (RFC 6184/7798) instead of PS: PT 98 H.264,
        // 99/100 H.265 (GB practice; PS is 96).
        if !self.forced && self.raw.is_none() && matches!(p.payload_type, 98..=100) {
            self.raw = Some(if p.payload_type == 98 {
                Depacketizer::h264()
            } else {
                Depacketizer::h265()
            });
        }
        let item = {
            let mut v = Vec::with_capacity(p.payload.len() + 8);
            v.extend_from_slice(&p.timestamp.to_be_bytes());
            v.push(p.marker as u8 | (p.payload_type << 1));
            v.extend_from_slice(p.payload);
            v
        };
        let mut released = std::mem::take(&mut self.released);
        self.reorder.push(p.sequence, item, now_ns, &mut released);
        self.consume(&mut released);
        self.released = released;
    }

    /// A datagram too long for the receive buffer (dropped, counted as
    /// garbage).
    pub fn oversized(&mut self) {
        self.stats.garbage += 1;
        if self.once(LOG_GARBAGE) {
            warn!(stream = %self.id, "oversized datagram on the media port dropped (logged once)");
        }
    }

    /// Releases what the reorder buffer held too long (call periodically).
    pub fn tick(&mut self, now_ns: u64) {
        let mut released = std::mem::take(&mut self.released);
        self.reorder.poll(now_ns, &mut released);
        self.consume(&mut released);
        self.released = released;
    }

    fn consume(&mut self, released: &mut Vec<Released<Vec<u8>>>) {
        for r in released.drain(..) {
            match r {
                Released::Gap { .. } => {
                    if self.raw.is_none() {
                        self.ps.discontinuity();
                    }
                }
                Released::Packet { seq, item } => {
                    if item.len() < 5 {
                        continue;
                    }
                    let ts = u32::from_be_bytes([item[0], item[1], item[2], item[3]]);
                    let marker = item[4] & 1 != 0;
                    let pt = item[4] >> 1;
                    let payload = &item[5..];
                    // Encrypted access units are passed on re-muxed from
                    // the clear frames (clear_frames), not as received.
                    let relay = !self.crypto.nal_encrypted();
                    if relay {
                        for f in &mut self.forwards {
                            f.send(pt, ts, marker, payload, &mut self.fwd_buf);
                        }
                    }
                    let frames = match &mut self.raw {
                        Some(d) => d.push(payload, seq, ts, marker),
                        None => {
                            if let (Some(r), true) = (&mut self.recorder, relay) {
                                if let Err(e) = r.ps(payload) {
                                    self.stats.dropped_frames += 1;
                                    if self.logged & LOG_IO == 0 {
                                        self.logged |= LOG_IO;
                                        warn!(stream = %self.id, error = %e, "recording failed (logged once)");
                                    }
                                }
                            }
                            self.ps.push(payload, ts, marker)
                        }
                    };
                    self.frames(frames);
                }
            }
        }
        let ps = self.ps.stats();
        if ps.resyncs > self.stats.ps_resyncs && self.once(LOG_PS) {
            warn!(stream = %self.id, "PS stream needed resynchronisation (damaged or garbage; logged once)");
        }
        self.stats.ps_resyncs = ps.resyncs;
        self.stats.dropped_frames = self
            .stats
            .dropped_frames
            .max(ps.dropped_frames + self.raw.as_ref().map_or(0, |d| d.stats().dropped_frames));
    }

    fn frames(&mut self, frames: Vec<Frame>) {
        let mut clear = Vec::with_capacity(frames.len());
        for f in frames {
            self.crypto.frame(f, &mut clear);
        }
        self.clear_frames(clear);
    }

    fn clear_frames(&mut self, frames: Vec<Frame>) {
        if self.remux.is_none() && self.crypto.nal_encrypted() {
            // The payloads are encrypted access units: forward (and record
            // as PS) what is muxed from the decrypted frames from now on.
            if let Some(f) = frames.iter().find(|f| f.kind == FrameKind::Video) {
                info!(stream = %self.id, "encrypted media: forwarding and PS recording use re-muxed clear frames");
                self.remux = Some(PsMuxer::new(f.codec));
                for fw in &mut self.forwards {
                    fw.stats.mode = "remux";
                }
            }
        }
        for f in frames {
            if let (Some(mux), FrameKind::Video) = (&mut self.remux, f.kind) {
                self.remux_buf.clear();
                let pts = f.pts.unwrap_or(f.rtp_timestamp as u64);
                mux.write_video(&f.data, pts, f.dts, &mut self.remux_buf);
                let chunks: Vec<&[u8]> = media::ps::packetize_rtp(&self.remux_buf, 1400).collect();
                for fw in &mut self.forwards {
                    for (i, c) in chunks.iter().enumerate() {
                        fw.send(
                            96,
                            f.rtp_timestamp,
                            i + 1 == chunks.len(),
                            c,
                            &mut self.fwd_buf,
                        );
                    }
                }
                if let Some(r) = &mut self.recorder {
                    if let Err(e) = r.ps(&self.remux_buf) {
                        if self.logged & LOG_IO == 0 {
                            self.logged |= LOG_IO;
                            warn!(stream = %self.id, error = %e, "recording failed (logged once)");
                        }
                    }
                }
            }
            if f.kind == FrameKind::Video {
                self.stats.frames += 1;
                if f.keyframe {
                    self.stats.keyframes += 1;
                }
                if self.stats.codec.is_none() {
                    self.stats.codec = Some(codec_name(f.codec).into());
                }
            }
            if let Some(r) = &mut self.recorder {
                if let Err(e) = r.frame(&f) {
                    if self.once(LOG_IO) {
                        warn!(stream = %self.id, error = %e, "recording failed (logged once)");
                    }
                }
            }
        }
    }

    /// End of the stream: flush everything.
    pub fn finish(&mut self) {
        let mut released = std::mem::take(&mut self.released);
        self.reorder.flush(&mut released);
        self.consume(&mut released);
        let tail = match &mut self.raw {
            Some(d) => d.flush(),
            None => self.ps.flush(),
        };
        self.frames(tail);
        let mut held = Vec::new();
        self.crypto.finish(&mut held);
        self.clear_frames(held);
        if let Some(r) = &mut self.recorder {
            if let Err(e) = r.close() {
                warn!(stream = %self.id, error = %e, "closing the recording failed");
            }
            self.stats.files = r.files.clone();
        }
        self.stats.decrypt = self.crypto.stats();
    }

    fn publish(&mut self, shared: &Mutex<MediaStats>) {
        self.stats.decrypt = self.crypto.stats();
        if !self.forwards.is_empty() {
            self.stats.forwards = self.forwards.iter().map(|f| f.stats.clone()).collect();
        }
        if let Some(r) = &self.recorder {
            if r.files.len() != self.stats.files.len() {
                self.stats.files = r.files.clone();
            }
        }
        if let Ok(mut s) = shared.lock() {
            *s = self.stats.clone();
        }
    }
}

/// A media socket reserved before the INVITE goes out.
pub enum Bound {
    Udp(std::net::UdpSocket),
    TcpListen(std::net::TcpListener),
    /// We connect to the device once its answer names the address.
    TcpActive,
}

/// Binds the media port for a session (so the port is ours before the
/// device is told about it).
pub fn bind(ip: IpAddr, port: u16, t: MediaTransport) -> std::io::Result<Bound> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(ip, port);
    match t {
        MediaTransport::Udp => {
            let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            // UDP loss breaks pictures: several MiB of receive buffer.
            let _ = s.set_recv_buffer_size(8 << 20);
            s.set_nonblocking(true)?;
            s.bind(&addr.into())?;
            Ok(Bound::Udp(s.into()))
        }
        MediaTransport::TcpPassive => {
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            s.set_reuse_address(true)?;
            s.set_nonblocking(true)?;
            s.bind(&addr.into())?;
            s.listen(4)?;
            Ok(Bound::TcpListen(s.into()))
        }
        MediaTransport::TcpActive => Ok(Bound::TcpActive),
    }
}

/// A running receiver.
pub struct Receiver {
    stop: Option<oneshot::Sender<()>>,
    pub stats: Arc<Mutex<MediaStats>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Stops it; the recording is flushed by the task.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    pub fn snapshot(&self) -> MediaStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Runs the pipeline on the bound socket until stopped.
pub fn start(bound: Bound, remote: Option<SocketAddr>, mut pipe: Pipeline) -> Receiver {
    let (tx, mut rx) = oneshot::channel::<()>();
    let stats = Arc::new(Mutex::new(MediaStats::default()));
    let shared = stats.clone();
    let t0 = Instant::now();
    let task = tokio::spawn(async move {
        let now_ns = move || t0.elapsed().as_nanos() as u64;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        match bound {
            Bound::Udp(s) => {
                let Ok(sock) = UdpSocket::from_std(s) else {
                    return;
                };
                // Batched receives: up to 16 datagrams per recvmmsg(2),
                // 8 KiB each (RTP from cameras fits an MTU; longer ones are
                // counted and dropped).
                let mut bufs = vec![vec![0u8; 8192]; 16];
                let mut lens = [0usize; 16];
                loop {
                    tokio::select! {
                        r = sock.readable() => {
                            if r.is_err() {
                                break;
                            }
                            loop {
                                let got = sock.try_io(tokio::io::Interest::READABLE, || {
                                    use std::os::fd::AsFd;
                                    crate::dataplane::sys::recv_mmsg(sock.as_fd(), &mut bufs, &mut lens)
                                });
                                match got {
                                    Ok(n) => {
                                        let t = now_ns();
                                        for (b, l) in bufs.iter().zip(&lens[..n]) {
                                            match b.get(..*l) {
                                                Some(d) => pipe.packet(d, t),
                                                None => pipe.oversized(),
                                            }
                                        }
                                        if n < bufs.len() {
                                            break;
                                        }
                                    }
                                    Err(_) => break,
                                }
                            }
                        }
                        _ = tick.tick() => { pipe.tick(now_ns()); pipe.publish(&shared); }
                        _ = &mut rx => {
                            // Ended (BYE, API): what already arrived is
                            // the device's; take it before closing.
                            use std::os::fd::AsFd;
                            while let Ok(n) = crate::dataplane::sys::recv_mmsg(sock.as_fd(), &mut bufs, &mut lens) {
                                let t = now_ns();
                                for (b, l) in bufs.iter().zip(&lens[..n]) {
                                    match b.get(..*l) {
                                        Some(d) => pipe.packet(d, t),
                                        None => pipe.oversized(),
                                    }
                                }
                            }
                            break;
                        }
                    }
                }
            }
            Bound::TcpListen(l) => {
                let Ok(l) = TcpListener::from_std(l) else {
                    return;
                };
                let stream = loop {
                    tokio::select! {
                        a = l.accept() => if let Ok((s, peer)) = a {
                            pipe.stats.peer = Some(peer.to_string());
                            info!(stream = %pipe.id, %peer, "media TCP connection accepted");
                            break Some(s);
                        },
                        _ = tick.tick() => pipe.publish(&shared),
                        _ = &mut rx => break None,
                    }
                };
                if let Some(s) = stream {
                    tcp_loop(s, &mut pipe, &shared, &mut rx, now_ns).await;
                }
            }
            Bound::TcpActive => {
                let mut stream = None;
                if let Some(addr) = remote {
                    for attempt in 1..=3 {
                        match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr))
                            .await
                        {
                            Ok(Ok(s)) => {
                                pipe.stats.peer = Some(addr.to_string());
                                stream = Some(s);
                                break;
                            }
                            _ => {
                                warn!(stream = %pipe.id, %addr, attempt, "media TCP connect failed");
                                tokio::select! {
                                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                                    _ = &mut rx => return,
                                }
                            }
                        }
                    }
                }
                if let Some(s) = stream {
                    tcp_loop(s, &mut pipe, &shared, &mut rx, now_ns).await;
                }
            }
        }
        pipe.finish();
        pipe.publish(&shared);
    });
    Receiver {
        stop: Some(tx),
        stats,
        task,
    }
}

async fn tcp_loop(
    mut s: TcpStream,
    pipe: &mut Pipeline,
    shared: &Mutex<MediaStats>,
    rx: &mut oneshot::Receiver<()>,
    now_ns: impl Fn() -> u64,
) {
    // RTP packets from cameras are ~1.4 KB; a length prefix beyond 32 KiB
    // is a broken or hostile peer: counted, and the connection closed.
    let mut dec = Rfc4571Decoder::with_max_len(32 * 1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    // After the stop request: keep reading what the peer already sent
    // until it closes or is idle for a second.
    let mut stopping = false;
    loop {
        if stopping {
            match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    dec.push(&buf[..n]);
                    while let Ok(Some(p)) = dec.next_packet() {
                        pipe.packet(&p, now_ns());
                    }
                    continue;
                }
                _ => break,
            }
        }
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    dec.push(&buf[..n]);
                    loop {
                        match dec.next_packet() {
                            Ok(Some(p)) => pipe.packet(&p, now_ns()),
                            Ok(None) => break,
                            Err(e) => {
                                pipe.stats.garbage += 1;
                                warn!(stream = %pipe.id, error = %e, "media TCP framing broken; closing the connection");
                                return;
                            }
                        }
                    }
                }
            },
            _ = tick.tick() => { pipe.tick(now_ns()); pipe.publish(shared); }
            _ = &mut *rx => stopping = true,
        }
    }
}

/// File name base of a recording.
pub fn record_base(device: &str, channel: &str, id: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    };
    format!("{}_{}_{}", clean(device), clean(channel), clean(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use media::{ps::PsMuxer, rtp::RtpHeader};

    fn au(idr: bool, n: usize, seed: u8) -> Vec<u8> {
        let mut v = Vec::new();
        if idr {
            v.extend_from_slice(&[0, 0, 0, 1, 0x67, 0x42, 0, 0x1f, 0xaa]);
            v.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
        }
        v.extend_from_slice(&[0, 0, 0, 1, if idr { 0x65 } else { 0x41 }]);
        v.extend((0..n).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed) | 1));
        v
    }

    fn packets(aus: &[Vec<u8>], ssrc: u32) -> Vec<Vec<u8>> {
        let mut mux = PsMuxer::new(Codec::H264);
        let mut out = Vec::new();
        let mut seq = 100u16;
        for (i, a) in aus.iter().enumerate() {
            let mut ps = Vec::new();
            mux.write_video(a, i as u64 * 3600, None, &mut ps);
            let chunks: Vec<&[u8]> = media::ps::packetize_rtp(&ps, 1388).collect();
            for (j, c) in chunks.iter().enumerate() {
                let mut p = Vec::new();
                RtpHeader {
                    marker: j + 1 == chunks.len(),
                    pt: 96,
                    seq,
                    ts: i as u32 * 3600,
                    ssrc,
                }
                .write(&mut p);
                p.extend_from_slice(c);
                out.push(p);
                seq = seq.wrapping_add(1);
            }
        }
        out
    }

    #[test]
    fn pipeline_records_exactly_what_was_sent() {
        let dir = std::env::temp_dir().join(format!("gw-rec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let aus: Vec<Vec<u8>> = (0..30)
            .map(|i| au(i % 10 == 0, 3000 + i * 50, i as u8))
            .collect();
        let pk = packets(&aus, 7);
        let rec = Recorder::new(
            RecordConfig {
                dir: dir.clone(),
                ps: true,
                ..RecordConfig::default()
            },
            "dev_ch_1",
        )
        .unwrap();
        let mut p = Pipeline::new("1", Some(7), Some(rec));
        // Swap two packets and duplicate one: still exact.
        let mut order: Vec<usize> = (0..pk.len()).collect();
        order.swap(3, 4);
        order.insert(10, 9);
        for (t, i) in order.into_iter().enumerate() {
            p.packet(&pk[i], t as u64 * 1_000_000);
        }
        p.packet(b"garbage", 0);
        p.finish();
        assert_eq!(p.stats.frames, 30);
        assert_eq!(p.stats.keyframes, 3);
        assert_eq!(p.stats.lost, 0);
        assert_eq!(p.stats.duplicates, 1);
        assert_eq!(p.stats.garbage, 1);
        assert_eq!(p.stats.ssrc_mismatches, 0);
        assert_eq!(p.stats.files.len(), 2);
        let find = |ext: &str| p.stats.files.iter().find(|f| f.ends_with(ext)).unwrap();
        let es = std::fs::read(find(".h264")).unwrap();
        assert!(es == aus.concat(), "recorded ES differs from what was sent");
        let ps = std::fs::read(find(".ps")).unwrap();
        assert!(ps.starts_with(&[0, 0, 1, 0xba]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// H.264 access units whose slice headers are plausible (the
    /// sm4-nal-ofb decryptor checks them): first_mb_in_slice 0, an I slice
    /// in IDRs, a P slice otherwise, PPS 0.
    fn plausible_au(idr: bool, n: usize, seed: u8) -> Vec<u8> {
        let mut v = Vec::new();
        if idr {
            v.extend_from_slice(&[0, 0, 0, 1, 0x67, 0x42, 0, 0x1f, 0xaa]);
            v.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
            v.extend_from_slice(&[0, 0, 0, 1, 0x65, 0x88, 0x84]);
        } else {
            v.extend_from_slice(&[0, 0, 1, 0x41, 0x9a, 0x02]);
        }
        v.extend((0..n).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed) | 1));
        v
    }

    const DEV: &str = "34020000001320000001";

    fn key_store(spec: &str) -> Arc<crate::keys::KeyStore> {
        let ks = crate::keys::KeyStore::new(None);
        ks.add(serde_json::from_str(spec).unwrap()).unwrap();
        ks
    }

    #[test]
    fn srtp_is_decrypted_tampering_and_replay_counted_forward_re_encrypted() {
        let dir = std::env::temp_dir().join(format!("gw-srtp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let aus: Vec<Vec<u8>> = (0..12)
            .map(|i| plausible_au(i % 6 == 0, 2500, i as u8))
            .collect();
        let clear = packets(&aus, 21);
        let m = MasterKey::from_inline("inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd").unwrap();
        let mut tx = SrtpSender::new(&m);
        let srtp: Vec<Vec<u8>> = clear
            .iter()
            .map(|p| {
                let mut o = Vec::new();
                tx.protect(p, &mut o).unwrap();
                o
            })
            .collect();
        let ks = key_store(&format!(
            r#"{{"device":"{DEV}","profile":"srtp-sm4","inline":"{}"}}"#,
            m.to_inline()
        ));
        let fwd_key = MasterKey {
            key: [9; 16],
            salt: [7; 14],
        };
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let f = Forward::new(rx.local_addr().unwrap(), 778)
            .unwrap()
            .with_srtp(&fwd_key);
        let rec = Recorder::new(
            RecordConfig {
                dir: dir.clone(),
                ..RecordConfig::default()
            },
            "srtp",
        )
        .unwrap();
        let view = KeyView::new(ks, DEV, DEV, None);
        let mut p = Pipeline::new("s", Some(21), Some(rec))
            .with_forwards(vec![f])
            .with_keys(Some(view), true);
        for (t, pkt) in srtp.iter().enumerate() {
            p.packet(pkt, t as u64);
            if t == 3 {
                p.packet(pkt, t as u64); // replayed
                                         // The next packet, tampered, ahead of the real one (which
                                         // must still be taken: the window moves on good tags only).
                let mut bad = srtp[4].clone();
                let last = bad.len() - 11;
                bad[last] ^= 1;
                p.packet(&bad, t as u64);
            }
        }
        p.finish();
        assert_eq!(p.stats.decrypt.srtp_packets, clear.len() as u64);
        assert_eq!(p.stats.decrypt.failures.get("replay"), Some(&1));
        assert_eq!(p.stats.decrypt.failures.get("bad_tag"), Some(&1));
        assert_eq!(
            p.stats.packets,
            clear.len() as u64,
            "refused packets are not accounted"
        );
        assert_eq!(p.stats.frames, 12);
        let es = std::fs::read(&p.stats.files[0]).unwrap();
        assert!(
            es == aus.concat(),
            "recording differs from the clear source"
        );
        // The forward is SRTP under its own key: decrypts to the payloads.
        let mut rxc = gb35114::srtp::SrtpReceiver::new();
        let keys: Vec<(u64, MasterKey)> = vec![(1, fwd_key)];
        let mut buf = [0u8; 2048];
        for orig in &clear {
            let n = rx.recv(&mut buf).unwrap();
            let mut out = Vec::new();
            rxc.unprotect(&buf[..n], &keys, &mut out).unwrap();
            let got = rtp::parse(&out).unwrap();
            assert_eq!(got.payload, rtp::parse(orig).unwrap().payload);
            assert_eq!(got.ssrc, 778);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn nal_encrypted_units_are_decrypted_and_forwarded_clear() {
        use gb35114::{nal, sm4::Sm4};
        let dir = std::env::temp_dir().join(format!("gw-nal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let aus: Vec<Vec<u8>> = (0..12)
            .map(|i| plausible_au(i % 6 == 0, 3000, i as u8))
            .collect();
        let key = [0x42u8; 16];
        let enc: Vec<Vec<u8>> = aus
            .iter()
            .enumerate()
            .map(|(i, a)| {
                nal::encrypt_access_unit(nal::NalCodec::H264, a, 3, &Sm4::new(&key), &[i as u8; 16])
            })
            .collect();
        assert!(enc.iter().zip(&aus).all(|(e, a)| e != a));
        let pk = packets(&enc, 31);
        let ks = key_store(&format!(
            r#"{{"device":"{DEV}","profile":"sm4-nal-ofb","version":3,"key":"{}"}}"#,
            "42".repeat(16)
        ));
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let f = Forward::new(rx.local_addr().unwrap(), 779).unwrap();
        let rec = Recorder::new(
            RecordConfig {
                dir: dir.clone(),
                ps: true,
                ..RecordConfig::default()
            },
            "nal",
        )
        .unwrap();
        let mut p = Pipeline::new("n", Some(31), Some(rec))
            .with_forwards(vec![f])
            .with_keys(Some(KeyView::new(ks, DEV, DEV, None)), false);
        for (t, pkt) in pk.iter().enumerate() {
            p.packet(pkt, t as u64);
        }
        p.finish();
        let d = &p.stats.decrypt;
        assert_eq!(
            (d.encrypted_frames, d.units, d.key_version),
            (12, 12, Some(3)),
            "{d:?}"
        );
        assert!(d.failures.is_empty(), "{d:?}");
        assert_eq!(d.state, "decrypting");
        let find = |ext: &str| p.stats.files.iter().find(|f| f.ends_with(ext)).unwrap();
        assert!(std::fs::read(find(".h264")).unwrap() == aus.concat());
        // The PS recording and the forward carry the clear frames.
        let demux = |ps: &[u8]| -> Vec<Vec<u8>> {
            let mut dm = PsDemuxer::new();
            let mut out: Vec<Vec<u8>> = dm.push(ps, 0, true).into_iter().map(|f| f.data).collect();
            out.extend(dm.flush().into_iter().map(|f| f.data));
            out
        };
        assert_eq!(demux(&std::fs::read(find(".ps")).unwrap()), aus);
        let mut fwd = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = rx.recv(&mut buf) {
            fwd.extend_from_slice(rtp::parse(&buf[..n]).unwrap().payload);
        }
        assert_eq!(demux(&fwd), aus);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn encrypted_units_without_a_key_are_never_recorded() {
        use gb35114::{nal, sm4::Sm4};
        let dir = std::env::temp_dir().join(format!("gw-nokey-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let aus: Vec<Vec<u8>> = (0..6)
            .map(|i| plausible_au(i % 3 == 0, 2000, i as u8))
            .collect();
        let enc: Vec<Vec<u8>> = aus
            .iter()
            .map(|a| {
                nal::encrypt_access_unit(nal::NalCodec::H264, a, 1, &Sm4::new(&[1; 16]), &[5; 16])
            })
            .collect();
        let rec = Recorder::new(
            RecordConfig {
                dir: dir.clone(),
                ..RecordConfig::default()
            },
            "nokey",
        )
        .unwrap();
        // No key store at all.
        let mut p = Pipeline::new("k", Some(41), Some(rec));
        for (t, pkt) in packets(&enc, 41).iter().enumerate() {
            p.packet(pkt, t as u64);
        }
        p.finish();
        assert_eq!(p.stats.frames, 0);
        assert!(p.stats.files.is_empty());
        assert_eq!(p.stats.decrypt.failures.get("no_key"), Some(&6));
        assert_eq!(p.stats.decrypt.state, "failing");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn forwards_in_order_under_its_own_ssrc() {
        let aus: Vec<Vec<u8>> = (0..5).map(|i| au(i == 0, 3000, i as u8)).collect();
        let pk = packets(&aus, 11);
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let f = Forward::new(rx.local_addr().unwrap(), 777).unwrap();
        let mut p = Pipeline::new("f", Some(11), None).with_forwards(vec![f]);
        let mut order: Vec<usize> = (0..pk.len()).collect();
        order.swap(1, 2);
        for (t, i) in order.into_iter().enumerate() {
            p.packet(&pk[i], t as u64);
        }
        p.finish();
        let mut buf = [0u8; 2048];
        let mut last_seq = None;
        for orig in &pk {
            let n = rx.recv(&mut buf).unwrap();
            let got = rtp::parse(&buf[..n]).unwrap();
            let want = rtp::parse(orig).unwrap();
            assert_eq!(got.ssrc, 777);
            assert_eq!(got.payload, want.payload, "payloads in the original order");
            assert_eq!((got.timestamp, got.marker), (want.timestamp, want.marker));
            if let Some(l) = last_seq {
                assert_eq!(got.sequence, u16::wrapping_add(l, 1));
            }
            last_seq = Some(got.sequence);
        }
        let shared = Mutex::new(MediaStats::default());
        p.publish(&shared);
        assert_eq!(shared.lock().unwrap().forwards[0].packets, pk.len() as u64);
    }

    #[test]
    fn loss_and_wrong_ssrc_are_counted() {
        let aus: Vec<Vec<u8>> = (0..10).map(|i| au(i == 0, 500, i as u8)).collect();
        let pk = packets(&aus, 9);
        let mut p = Pipeline::new("2", Some(8), None);
        for (i, x) in pk.iter().enumerate() {
            if i == 5 {
                continue;
            }
            p.packet(x, i as u64 * 1_000_000);
        }
        p.finish();
        assert_eq!(p.stats.lost, 1);
        assert_eq!(p.stats.ssrc_mismatches as usize, pk.len() - 1);
        assert_eq!(p.stats.ssrc, Some(9));
        assert!(p.stats.frames < 10);
    }

    #[test]
    fn rotation_starts_new_files_at_key_frames() {
        let dir = std::env::temp_dir().join(format!("gw-rot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let aus: Vec<Vec<u8>> = (0..40).map(|i| au(i % 10 == 0, 2000, i as u8)).collect();
        let rec = Recorder::new(
            RecordConfig {
                dir: dir.clone(),
                max_file_bytes: 5000,
                ..RecordConfig::default()
            },
            "r",
        )
        .unwrap();
        let mut p = Pipeline::new("3", None, Some(rec));
        for (t, x) in packets(&aus, 1).iter().enumerate() {
            p.packet(x, t as u64 * 1_000_000);
        }
        p.finish();
        assert_eq!(p.stats.files.len(), 4);
        let mut all = Vec::new();
        for f in &p.stats.files {
            let b = std::fs::read(f).unwrap();
            // Every file starts with the SPS of a key frame.
            assert_eq!(&b[..5], &[0, 0, 0, 1, 0x67]);
            all.extend(b);
        }
        assert!(
            all == aus.concat(),
            "rotated files differ from what was sent"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
