//! Media of one stream: access units muxed into PS, cut into RTP packets,
//! run through the impairment schedule and sent over UDP or RFC 4571 TCP
//! (the device connecting, or accepting the platform's connection).
//!
//! Counters go to the shared report once per frame, never per packet.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use media::{framing::encode_rfc4571, ps::PsMuxer, rtp::RtpHeader};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream, UdpSocket},
    sync::{mpsc, oneshot, watch},
    time::timeout,
};
use tracing::{info, warn};

use crate::{au::Media, status::Shared};

/// Payload type of PS.
pub const PT_PS: u8 = 96;

/// `--rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Rate {
    // Pace frames by --fps.
    Realtime,
    // As fast as possible, yielding every 64 packets.
    Flat,
}

/// Packet-level impairments, applied by index after packetization
/// (index = position of the packet in the stream, 0-based, across loops).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Impairments {
    /// Drop packets N-1, 2N-1, ... (every Nth).
    pub drop_every: Option<u64>,
    /// Drop these packet indexes.
    pub drop_packets: BTreeSet<u64>,
    /// Swap packet i and i+1 for i = N-1, 2N-1, ...
    pub reorder_every: Option<u64>,
    /// Send packets N-1, 2N-1, ... twice.
    pub duplicate_every: Option<u64>,
}

impl Impairments {
    pub fn is_empty(&self) -> bool {
        *self == Impairments::default()
    }

    fn nth(every: Option<u64>, k: u64) -> bool {
        every.is_some_and(|n| n > 0 && (k + 1).is_multiple_of(n))
    }

    /// What happens to packet `k`: (drop, duplicate, hold for a swap).
    pub fn action(&self, k: u64) -> (bool, bool, bool) {
        let drop = self.drop_packets.contains(&k) || Self::nth(self.drop_every, k);
        if drop {
            return (true, false, false);
        }
        (
            false,
            Self::nth(self.duplicate_every, k),
            Self::nth(self.reorder_every, k),
        )
    }
}

/// Counters of what the schedule did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScheduleCounts {
    pub dropped: u64,
    pub duplicated: u64,
    pub reordered: u64,
}

/// The impairment schedule: packets in by index, packets out in wire order.
#[derive(Debug, Default)]
pub struct Schedule {
    imp: Impairments,
    /// A packet held back to be sent after the next one (with its dup flag).
    held: Option<(Vec<u8>, bool)>,
    pub counts: ScheduleCounts,
}

impl Schedule {
    pub fn new(imp: Impairments) -> Self {
        Schedule {
            imp,
            held: None,
            counts: ScheduleCounts::default(),
        }
    }

    fn emit(&mut self, pkt: Vec<u8>, dup: bool, out: &mut Vec<Vec<u8>>) {
        if dup {
            self.counts.duplicated += 1;
            out.push(pkt.clone());
        }
        out.push(pkt);
    }

    /// Packet `k` (indexes must come in order); what to send now is
    /// appended to `out`.
    pub fn push(&mut self, k: u64, pkt: Vec<u8>, out: &mut Vec<Vec<u8>>) {
        let (drop, dup, hold) = self.imp.action(k);
        if drop {
            self.counts.dropped += 1;
            return;
        }
        if let Some((h, hdup)) = self.held.take() {
            // The second of a swapped pair goes first.
            self.emit(pkt, dup, out);
            self.emit(h, hdup, out);
            self.counts.reordered += 1;
        } else if hold {
            self.held = Some((pkt, dup));
        } else {
            self.emit(pkt, dup, out);
        }
    }

    /// End of the stream: a packet still held is sent as is.
    pub fn flush(&mut self, out: &mut Vec<Vec<u8>>) {
        if let Some((h, dup)) = self.held.take() {
            self.emit(h, dup, out);
        }
    }
}

/// Media settings shared by all streams.
#[derive(Debug, Clone)]
pub struct MediaOpts {
    pub encryption: Option<crate::crypt::Encryption>,
    /// srtp-sm4: answer with a=crypto even without one in the offer.
    pub answer_crypto: bool,
    pub media: Option<Arc<Media>>,
    pub fps: u32,
    pub payload_size: usize,
    pub rate: Rate,
    pub looping: bool,
    pub wrong_markers: bool,
    pub impairments: Impairments,
    pub bye_after: Option<Duration>,
    /// Playbacks and downloads go on past the end of the file (looping)
    /// and never announce its end (MediaStatus 121).
    pub history_never_ends: bool,
}

/// How the media gets to the platform.
pub enum Link {
    /// UDP from this (already bound) socket to the offer's address.
    Udp { sock: UdpSocket, dest: SocketAddr },
    /// The platform listens (offer `a=setup:passive`): connect from `local`.
    Connect { local: SocketAddr, dest: SocketAddr },
    /// The platform connects (offer `a=setup:active`): accept on this listener.
    Accept { listener: TcpListener },
}

/// What a stream tells its device.
#[derive(Debug)]
pub enum StreamEvent {
    /// `--bye-after` elapsed: the device ends the dialog with BYE.
    ByeAfter { call_id: String },
    /// The stream could not start or broke (the dialog stays until BYE).
    Ended { call_id: String },
    /// A playback or download sent the whole file: the device says so
    /// (MediaStatus 121) and the platform ends the dialog.
    FileEnd { call_id: String },
}

/// How a playback is paced, as the platform's MANSRTSP controls set it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    pub paused: bool,
    /// Frames per second = fps x scale.
    pub scale: f32,
    /// The last seek: (how many seeks so far, seconds from the start).
    pub seek: (u32, u64),
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            paused: false,
            scale: 1.0,
            seek: (0, 0),
        }
    }
}

/// One stream to run.
pub struct Spec {
    /// Index in the report's stream list.
    pub index: usize,
    pub call_id: String,
    pub label: String,
    pub ssrc: u32,
    pub link: Link,
    /// srtp-sm4 key agreed in SDP (used when no --key was given).
    pub session_key: Option<gb35114::srtp::MasterKey>,
    /// s=Playback or s=Download: the end of the file is announced.
    pub history: bool,
    /// s=Playback: the platform's pause, scale and seek.
    pub pace: Option<watch::Receiver<Pace>>,
}

enum Conn {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream),
}

/// The device stops a stream.
#[derive(Debug, Clone)]
pub struct Stop {
    pub reason: String,
    /// Let the platform read everything sent before the stream ends (the
    /// device sends BYE right after, which makes the platform stop reading).
    pub drain: bool,
}

/// Why the sender stopped.
enum Interrupt {
    Stop(Stop),
    ByeAfter,
}

impl Interrupt {
    fn failed(reason: String) -> Self {
        Interrupt::Stop(Stop {
            reason,
            drain: false,
        })
    }

    fn gone() -> Self {
        Self::failed("device gone".into())
    }
}

/// Runs a stream until stopped (`stop` carries the reason), `--bye-after`
/// elapses, or the connection breaks.
pub async fn run(
    spec: Spec,
    opts: Arc<MediaOpts>,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<Stop>,
    events: mpsc::Sender<StreamEvent>,
) {
    let started = Instant::now();
    let bye_at = opts.bye_after.map(|d| started + d);
    let Spec {
        index,
        call_id,
        label,
        ssrc,
        link,
        session_key,
        history,
        pace,
    } = spec;
    let outcome = async {
        let mut conn = match establish(link, &label, &mut stop, bye_at).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        match &conn {
            Conn::Tcp(s) => {
                let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                shared.stream(index, |r| r.destination = peer.clone());
                info!(stream = %label, %peer, "media TCP connection up");
            }
            Conn::Udp(..) => {}
        }
        shared.stream(index, |r| r.state = "streaming".into());
        let file_end =
            (history && !opts.history_never_ends).then(|| (events.clone(), call_id.clone()));
        let i = send(
            &mut conn,
            &opts,
            &shared,
            index,
            ssrc,
            &label,
            &mut stop,
            bye_at,
            session_key.as_ref(),
            file_end,
            pace,
            history && opts.history_never_ends,
        )
        .await;
        let drain = match &i {
            Interrupt::ByeAfter => true,
            Interrupt::Stop(s) => s.drain,
        };
        if drain {
            drain_conn(&mut conn).await;
        }
        i
    }
    .await;
    let (reason, bye) = match outcome {
        Interrupt::Stop(s) => (s.reason, false),
        Interrupt::ByeAfter => ("bye-after: the device ended the stream".to_string(), true),
    };
    shared.stream(index, |r| r.end(&reason));
    let ev = if bye {
        StreamEvent::ByeAfter { call_id }
    } else {
        StreamEvent::Ended { call_id }
    };
    let _ = events.send(ev).await;
}

/// Waits for `deadline`, a stop or `--bye-after`, whichever comes first;
/// `None` when the deadline came.
async fn wait(
    deadline: Option<Instant>,
    stop: &mut oneshot::Receiver<Stop>,
    bye_at: Option<Instant>,
) -> Option<Interrupt> {
    let sleep = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    let bye = async {
        match bye_at {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = stop => Some(r.map_or_else(|_| Interrupt::gone(), Interrupt::Stop)),
        _ = bye => Some(Interrupt::ByeAfter),
        _ = sleep => None,
    }
}

/// Not waiting: a stop or `--bye-after` that already happened.
fn poll_interrupt(
    stop: &mut oneshot::Receiver<Stop>,
    bye_at: Option<Instant>,
) -> Option<Interrupt> {
    match stop.try_recv() {
        Ok(r) => return Some(Interrupt::Stop(r)),
        Err(oneshot::error::TryRecvError::Closed) => return Some(Interrupt::gone()),
        Err(oneshot::error::TryRecvError::Empty) => {}
    }
    bye_at
        .is_some_and(|b| Instant::now() >= b)
        .then_some(Interrupt::ByeAfter)
}

async fn establish(
    link: Link,
    label: &str,
    stop: &mut oneshot::Receiver<Stop>,
    bye_at: Option<Instant>,
) -> Result<Conn, Interrupt> {
    match link {
        Link::Udp { sock, dest } => Ok(Conn::Udp(sock, dest)),
        Link::Connect { local, dest } => {
            for attempt in 1..=3 {
                let tried = async {
                    let s = if local.is_ipv4() {
                        TcpSocket::new_v4()?
                    } else {
                        TcpSocket::new_v6()?
                    };
                    s.set_reuseaddr(true)?;
                    s.bind(local)?;
                    tokio::time::timeout(Duration::from_secs(3), s.connect(dest))
                        .await
                        .map_err(|_| std::io::Error::other("connect timed out"))?
                };
                let r = tokio::select! {
                    r = tried => r,
                    i = wait(None, stop, bye_at) => return Err(i.unwrap_or(Interrupt::ByeAfter)),
                };
                match r {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        return Ok(Conn::Tcp(s));
                    }
                    Err(e) => {
                        warn!(stream = %label, %dest, attempt, error = %e, "media TCP connect failed");
                        if attempt < 3 {
                            let next = Instant::now() + Duration::from_secs(1);
                            if let Some(i) = wait(Some(next), stop, bye_at).await {
                                return Err(i);
                            }
                        }
                    }
                }
            }
            Err(Interrupt::failed(format!(
                "media TCP connect to {dest} failed 3 times"
            )))
        }
        Link::Accept { listener } => {
            let limit = Instant::now() + Duration::from_secs(30);
            tokio::select! {
                a = listener.accept() => match a {
                    Ok((s, _)) => {
                        let _ = s.set_nodelay(true);
                        Ok(Conn::Tcp(s))
                    }
                    Err(e) => Err(Interrupt::failed(format!("media TCP accept failed: {e}"))),
                },
                i = wait(Some(limit), stop, bye_at) => Err(i.unwrap_or_else(|| {
                    Interrupt::failed("the platform did not connect for media within 30 s".into())
                })),
            }
        }
    }
}

/// Local counters, published once per frame.
#[derive(Default)]
struct Counters {
    frames: u64,
    packets: u64,
    bytes: u64,
    send_errors: u64,
    loops: u64,
}

#[allow(clippy::too_many_arguments)]
async fn send(
    conn: &mut Conn,
    opts: &MediaOpts,
    shared: &Shared,
    index: usize,
    ssrc: u32,
    label: &str,
    stop: &mut oneshot::Receiver<Stop>,
    bye_at: Option<Instant>,
    session_key: Option<&gb35114::srtp::MasterKey>,
    file_end: Option<(mpsc::Sender<StreamEvent>, String)>,
    mut pace: Option<watch::Receiver<Pace>>,
    endless: bool,
) -> Interrupt {
    let Some(media) = opts.media.clone() else {
        // No --media: the session stays open without packets.
        shared.stream(index, |r| r.state = "idle".into());
        return wait(None, stop, bye_at)
            .await
            .unwrap_or(Interrupt::ByeAfter);
    };
    let fps = opts.fps.max(1) as u64;
    let mut enc = match &opts.encryption {
        None => None,
        Some(e) => match crate::crypt::StreamEnc::new(e, media.codec, session_key) {
            Ok(x) => {
                let profile = if x.is_srtp() {
                    "srtp-sm4"
                } else {
                    "sm4-nal-ofb"
                };
                shared.stream(index, |r| r.encryption = Some(profile.into()));
                Some(x)
            }
            Err(e) => return Interrupt::failed(format!("encryption: {e:#}")),
        },
    };
    let mut mux = PsMuxer::new(media.codec);
    let mut sched = Schedule::new(opts.impairments.clone());
    let mut c = Counters::default();
    let (mut seq, mut k, mut n) = (0u16, 0u64, 0u64);
    let mut ps = Vec::with_capacity(256 * 1024);
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(256);
    let mut tcp_buf: Vec<u8> = Vec::with_capacity(256 * 1024);
    let mut since_yield = 0usize;
    // Realtime pacing: frame n is due at t_ref + (n - n_ref) / (fps x
    // scale); a control moves the reference.
    let (mut t_ref, mut n_ref, mut cur) = (Instant::now(), 0u64, Pace::default());
    let (mut i, mut woken) = (0usize, false);
    let publish = |c: &Counters, s: &ScheduleCounts| {
        shared.stream(index, |r| {
            r.frames_sent = c.frames;
            r.packets_sent = c.packets;
            r.bytes_sent = c.bytes;
            r.send_errors = c.send_errors;
            r.loops = c.loops;
            r.packets_dropped = s.dropped;
            r.packets_duplicated = s.duplicated;
            r.packets_reordered = s.reordered;
        })
    };
    loop {
        if i >= media.aus.len() {
            c.loops += 1;
            if !(opts.looping || endless) {
                break;
            }
            i = 0;
        }
        if let Some(rx) = pace.as_mut() {
            if woken || rx.has_changed().unwrap_or(false) {
                woken = false;
                let p = *rx.borrow_and_update();
                if p.seek.0 != cur.seek.0 {
                    i = ((p.seek.1 * fps) as usize).min(media.aus.len().saturating_sub(1));
                }
                cur = p;
                (t_ref, n_ref) = (Instant::now(), n);
                shared.stream(index, |r| {
                    r.paused = p.paused;
                    r.scale = Some(p.scale);
                    r.file_frame = i as u64;
                });
            }
            if cur.paused {
                // Nothing is sent until the next control (or the end).
                let changed = async {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await
                    }
                };
                tokio::select! {
                    r = wait(None, stop, bye_at) => {
                        publish(&c, &sched.counts);
                        return r.unwrap_or(Interrupt::ByeAfter);
                    }
                    _ = changed => woken = true,
                }
                continue;
            }
        }
        let au = &media.aus[i];
        {
            let interrupt = match opts.rate {
                Rate::Realtime => {
                    let per = 1e9 / (fps as f64 * cur.scale.max(0.01) as f64);
                    let due = t_ref + Duration::from_nanos(((n - n_ref) as f64 * per) as u64);
                    wait(Some(due), stop, bye_at).await
                }
                Rate::Flat => poll_interrupt(stop, bye_at),
            };
            if let Some(i) = interrupt {
                publish(&c, &sched.counts);
                return i;
            }
            let pts = n * 90_000 / fps;
            ps.clear();
            let encrypted = enc.as_mut().and_then(|e| {
                e.begin_frame(n);
                e.access_unit(au)
            });
            mux.write_video(encrypted.as_deref().unwrap_or(au), pts, None, &mut ps);
            let chunks: Vec<&[u8]> = media::ps::packetize_rtp(&ps, opts.payload_size).collect();
            out.clear();
            for (j, chunk) in chunks.iter().enumerate() {
                let mut p = Vec::with_capacity(12 + chunk.len());
                RtpHeader {
                    marker: !opts.wrong_markers && j + 1 == chunks.len(),
                    pt: PT_PS,
                    seq,
                    ts: pts as u32,
                    ssrc,
                }
                .write(&mut p);
                p.extend_from_slice(chunk);
                let p = match enc.as_mut() {
                    Some(e) => e.packet(p),
                    None => p,
                };
                sched.push(k, p, &mut out);
                seq = seq.wrapping_add(1);
                k += 1;
            }
            if let Err(e) = transmit(conn, &out, &mut tcp_buf, &mut c, &mut since_yield, opts).await
            {
                publish(&c, &sched.counts);
                return Interrupt::failed(e);
            }
            c.frames += 1;
            n += 1;
            i += 1;
            publish(&c, &sched.counts);
            if pace.is_some() {
                shared.stream(index, |r| r.file_frame = i as u64);
            }
            if let Some(e) = &enc {
                let (v, f) = (e.key_version(), e.encrypted_frames);
                shared.stream(index, |r| {
                    r.key_version = Some(v);
                    r.encrypted_frames = f;
                });
            }
        }
    }
    out.clear();
    sched.flush(&mut out);
    if let Err(e) = transmit(conn, &out, &mut tcp_buf, &mut c, &mut since_yield, opts).await {
        publish(&c, &sched.counts);
        return Interrupt::failed(e);
    }
    publish(&c, &sched.counts);
    shared.stream(index, |r| r.state = "idle".into());
    info!(
        stream = %label,
        frames = c.frames,
        packets = c.packets,
        dropped = sched.counts.dropped,
        "file sent; session stays open"
    );
    if let Some((events, call_id)) = file_end {
        let _ = events.send(StreamEvent::FileEnd { call_id }).await;
    }
    // Keep the TCP connection open until the session ends.
    wait(None, stop, bye_at)
        .await
        .unwrap_or(Interrupt::ByeAfter)
}

/// Before the device's BYE: lets the platform take in what is in flight.
/// TCP: half-close and wait (3 s at most) until the platform has read
/// everything and closed; UDP: a short grace for its receive queue.
async fn drain_conn(conn: &mut Conn) {
    match conn {
        Conn::Udp(..) => tokio::time::sleep(Duration::from_millis(300)).await,
        Conn::Tcp(s) => {
            let _ = timeout(Duration::from_secs(3), async {
                s.shutdown().await?;
                let mut buf = [0u8; 2048];
                while s.read(&mut buf).await? > 0 {}
                Ok::<(), std::io::Error>(())
            })
            .await;
        }
    }
}

/// Puts packets on the wire; counts what was sent.
async fn transmit(
    conn: &mut Conn,
    pkts: &[Vec<u8>],
    tcp_buf: &mut Vec<u8>,
    c: &mut Counters,
    since_yield: &mut usize,
    opts: &MediaOpts,
) -> Result<(), String> {
    match conn {
        Conn::Udp(sock, dest) => {
            for p in pkts {
                match sock.send_to(p, *dest).await {
                    Ok(_) => {
                        c.packets += 1;
                        c.bytes += p.len() as u64;
                    }
                    Err(_) => c.send_errors += 1,
                }
                *since_yield += 1;
                if opts.rate == Rate::Flat && *since_yield >= 64 {
                    *since_yield = 0;
                    tokio::task::yield_now().await;
                }
            }
        }
        Conn::Tcp(s) => {
            tcp_buf.clear();
            for p in pkts {
                encode_rfc4571(p, tcp_buf).map_err(|e| format!("RFC 4571 framing: {e}"))?;
            }
            if !tcp_buf.is_empty() {
                s.write_all(tcp_buf)
                    .await
                    .map_err(|e| format!("media TCP connection lost: {e}"))?;
            }
            c.packets += pkts.len() as u64;
            c.bytes += pkts.iter().map(|p| p.len() as u64).sum::<u64>();
            *since_yield += pkts.len();
            if opts.rate == Rate::Flat && *since_yield >= 64 {
                *since_yield = 0;
                tokio::task::yield_now().await;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(imp: Impairments, n: u64) -> (Vec<u64>, ScheduleCounts) {
        let mut s = Schedule::new(imp);
        let mut out = Vec::new();
        for k in 0..n {
            s.push(k, k.to_be_bytes().to_vec(), &mut out);
        }
        s.flush(&mut out);
        let order = out
            .iter()
            .map(|p| u64::from_be_bytes(p[..8].try_into().unwrap()))
            .collect();
        (order, s.counts)
    }

    #[test]
    fn no_impairments_keep_everything_in_order() {
        let (o, c) = run(Impairments::default(), 10);
        assert_eq!(o, (0..10).collect::<Vec<_>>());
        assert_eq!(c, ScheduleCounts::default());
    }

    #[test]
    fn drop_every_and_list() {
        let imp = Impairments {
            drop_every: Some(4),
            drop_packets: [0, 5, 6, 7].into_iter().collect(),
            ..Default::default()
        };
        let (o, c) = run(imp, 12);
        // Every 4th: 3, 7, 11; list: 0, 5, 6, 7 (7 counted once).
        assert_eq!(o, vec![1, 2, 4, 8, 9, 10]);
        assert_eq!(c.dropped, 6);
    }

    #[test]
    fn reorder_swaps_pairs() {
        let imp = Impairments {
            reorder_every: Some(3),
            ..Default::default()
        };
        let (o, c) = run(imp, 9);
        assert_eq!(o, vec![0, 1, 3, 2, 4, 6, 5, 7, 8]);
        assert_eq!(c.reordered, 2);
        // A packet held at the very end is flushed.
        let imp = Impairments {
            reorder_every: Some(5),
            ..Default::default()
        };
        let (o, c) = run(imp, 5);
        assert_eq!(o, vec![0, 1, 2, 3, 4]);
        assert_eq!(c.reordered, 0);
    }

    #[test]
    fn duplicates_and_combinations() {
        let imp = Impairments {
            duplicate_every: Some(2),
            ..Default::default()
        };
        let (o, c) = run(imp, 5);
        assert_eq!(o, vec![0, 1, 1, 2, 3, 3, 4]);
        assert_eq!(c.duplicated, 2);
        // A dropped packet is neither duplicated nor held; a held packet
        // keeps its duplicate.
        let imp = Impairments {
            drop_every: Some(4),
            duplicate_every: Some(2),
            reorder_every: Some(6),
            ..Default::default()
        };
        let (o, c) = run(imp, 8);
        // 1 dup, 3 dropped, 5 dup + held, 6 then 5 5, 7 dropped.
        assert_eq!(o, vec![0, 1, 1, 2, 4, 6, 5, 5]);
        assert_eq!(
            c,
            ScheduleCounts {
                dropped: 2,
                duplicated: 2,
                reordered: 1
            }
        );
    }

    #[test]
    fn schedule_is_deterministic() {
        let imp = Impairments {
            drop_every: Some(7),
            reorder_every: Some(5),
            duplicate_every: Some(3),
            drop_packets: [2, 40].into_iter().collect(),
        };
        assert_eq!(run(imp.clone(), 200), run(imp, 200));
    }
}
