//! Media benchmarks.
//!
//! 1. PS demux throughput on a recorded stream: ffmpeg encodes 1280x720
//!    H.264 at about 4 Mbit/s, it is muxed to PS (as a GB28181 camera
//!    sends it) and written to disk; the gateway's demuxer reads it in
//!    1388-byte RTP-sized pieces. Baselines in the same run: a plain copy of
//!    the same pieces, and ffmpeg's own MPEG-PS demuxer (`-f mpeg -c copy -f
//!    null`) on the same file.
//! 2. Streams at 4 Mbit/s each through receive + demux + record (to
//!    /dev/shm, so the disk is not what is measured): the gateway's CPU at
//!    10, 100 and 500 streams, sent from this process on loopback.
//! 3. relay: the same streams, each also forwarded (`forward =` on the
//!    static receiver: the userspace `stream::Forward` path of cascade
//!    relay legs) to sink sockets of this process, which count what
//!    arrives. Per count, the baseline is run 2 measured just before:
//!    %core per stream with and without the relay, the extra, and the
//!    ratio. This is the figure a kernel relay has to beat.
//!
//! `media-bench [--quick]`. Needs ffmpeg; no root.

use std::{
    net::UdpSocket,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use gateway_tests::benchmedia::{encode, rtp_frames};
use gateway_tests::sipp::{free_port, Daemon, TempDir};
use media::{ps::PsDemuxer, ps::PsMuxer, Codec};

fn best_of(n: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..n).map(|_| f()).min().unwrap_or_default()
}

/// What one run of `n` streams measured.
struct StreamRun {
    sent: u64,
    /// Packets the gateway's receivers counted.
    recv: u64,
    frames: u64,
    /// Gateway CPU, % of one core, over the run (and the 0.5 s drain).
    share: f64,
    /// Packets the gateway's forwards sent, and their send errors.
    relayed: u64,
    relay_errors: u64,
    /// Packets the sink sockets received.
    sink: u64,
}

/// Sockets of this process that count what the gateway relays to them
/// (one thread each, until dropped).
struct Sinks {
    addrs: Vec<std::net::SocketAddr>,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Sinks {
    fn new(k: usize) -> Result<Sinks> {
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (mut addrs, mut threads) = (Vec::new(), Vec::new());
        for _ in 0..k {
            let sock = UdpSocket::bind("127.0.0.1:0")?;
            let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(4 << 20);
            sock.set_read_timeout(Some(Duration::from_millis(100)))?;
            addrs.push(sock.local_addr()?);
            let (count, stop) = (count.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if sock.recv(&mut buf).is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        Ok(Sinks {
            addrs,
            count,
            stop,
            threads,
        })
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// `n` static receivers (`[[media.streams]]`) recording to `shm`, each
/// sent 4 Mbit/s of PS/RTP from this process for `secs`; with `relay`,
/// each also forwards to one of four sink sockets of this process.
/// The first of `n` pairs of media ports: outside the kernel's ephemeral
/// range (`ip_local_port_range`), where `free_port`, the sinks and every
/// other socket bound to port 0 take theirs. (A fixed 41000 once collided
/// with the SIP port `free_port` had picked, and the run failed.)
fn media_base(n: usize) -> u16 {
    let need = 2 * n as u32 + 2;
    let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().filter_map(|w| w.parse::<u32>().ok());
            Some((it.next()?, it.next()?))
        })
        .unwrap_or((32768, 60999));
    if hi + need <= 65535 {
        (hi + 1) as u16
    } else if lo >= 1024 + need {
        (lo - need) as u16
    } else {
        41000
    }
}

fn run_streams(
    dir: &Path,
    shm: &Path,
    frame_pkts: &[Vec<Vec<u8>>],
    n: usize,
    secs: f64,
    relay: bool,
) -> Result<StreamRun> {
    let _ = std::fs::remove_dir_all(shm);
    let sinks = if relay { Some(Sinks::new(4)?) } else { None };
    let (sip_port, api_port) = (free_port(), free_port());
    let base = media_base(n);
    let mut streams = String::new();
    for i in 0..n {
        streams.push_str(&format!(
            "[[media.streams]]\nname = \"s{i}\"\nlisten = \"127.0.0.1:{}\"\n",
            base + 2 * i as u16
        ));
        if let Some(s) = &sinks {
            streams.push_str(&format!("forward = [\"{}\"]\n", s.addrs[i % s.addrs.len()]));
        }
    }
    let cfg = Daemon::config(
        dir,
        sip_port,
        api_port,
        "password = \"x\"\n",
        &format!(
            "[media]\n[media.record]\ndir = \"{}\"\n{streams}",
            shm.display()
        ),
    );
    let mut gw = Daemon::start(&cfg, sip_port, api_port)?;
    let pid = gw.pid().context("pid")?;
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    let _ = socket2::SockRef::from(&sock).set_send_buffer_size(8 << 20);
    let frame_period = 1.0 / 25.0;
    let c0 = gateway_tests::cpu_secs(pid);
    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut seqs = vec![0u16; n];
    let mut frame = 0usize;
    while t0.elapsed().as_secs_f64() < secs {
        let due = t0 + Duration::from_secs_f64(frame as f64 * frame_period);
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        let pk = &frame_pkts[frame % frame_pkts.len()];
        for (s, seq) in seqs.iter_mut().enumerate() {
            let port = base + 2 * s as u16;
            for p in pk {
                let mut p = p.clone();
                p[2..4].copy_from_slice(&seq.to_be_bytes());
                // RTP timestamp continues across file loops.
                let ts = (frame as u32).wrapping_mul(3600);
                p[4..8].copy_from_slice(&ts.to_be_bytes());
                *seq = seq.wrapping_add(1);
                if sock.send_to(&p, ("127.0.0.1", port)).is_ok() {
                    sent += 1;
                }
            }
        }
        frame += 1;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let cpu = gateway_tests::cpu_secs(pid) - c0;
    let list = gw.get("/api/streams")?;
    let mut r = StreamRun {
        sent,
        recv: 0,
        frames: 0,
        share: cpu / (elapsed + 0.5) * 100.0,
        relayed: 0,
        relay_errors: 0,
        sink: sinks
            .as_ref()
            .map_or(0, |s| s.count.load(Ordering::Relaxed)),
    };
    for s in list["streams"].as_array().into_iter().flatten() {
        r.recv += s["media"]["packets"].as_u64().unwrap_or(0);
        r.frames += s["media"]["frames"].as_u64().unwrap_or(0);
        for f in s["media"]["forwards"].as_array().into_iter().flatten() {
            r.relayed += f["packets"].as_u64().unwrap_or(0);
            r.relay_errors += f["errors"].as_u64().unwrap_or(0);
        }
    }
    gw.stop();
    drop(sinks);
    let _ = std::fs::remove_dir_all(shm);
    Ok(r)
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    println!("media benchmark; CPU: {}", gateway_tests::cpu_model());
    let dir = TempDir::new("mediabench");
    let aus = encode(dir.path(), if quick { 4 } else { 10 })?;
    let mut ps = Vec::new();
    let mut mux = PsMuxer::new(Codec::H264);
    for (i, au) in aus.iter().enumerate() {
        mux.write_video(au, i as u64 * 3600, None, &mut ps);
    }
    // The recorded stream repeated to a size where process start-up does
    // not dominate ffmpeg's figure (its start-up, measured on one copy, is
    // subtracted too).
    let copies = if quick { 20 } else { 50 };
    let big: Vec<u8> = ps.repeat(copies);
    let ps_file = dir.path().join("recorded.ps");
    let one_file = dir.path().join("one.ps");
    std::fs::write(&ps_file, &big)?;
    std::fs::write(&one_file, &ps)?;
    let chunks: Vec<&[u8]> = media::ps::packetize_rtp(&big, 1388).collect();
    let mb = big.len() as f64 / 1e6;
    let reps = if quick { 3 } else { 10 };

    println!(
        "## PS demux throughput ({mb:.1} MB of recorded PS: {} frames of 1280x720 H.264 at ~4 Mbit/s, x{copies})",
        aus.len()
    );
    let mut frames = 0;
    let demux = best_of(reps, || {
        let t = Instant::now();
        let mut d = PsDemuxer::new();
        let mut n = 0;
        for (i, c) in chunks.iter().enumerate() {
            n += d.push(c, i as u32, false).len();
        }
        n += d.flush().len();
        frames = n;
        t.elapsed()
    });
    if frames != aus.len() * copies {
        bail!(
            "demuxer returned {frames} frames, expected {}",
            aus.len() * copies
        );
    }
    // Copy baseline: the same pieces appended to a buffer that is reused
    // per 1 MiB (as a demuxer reuses its frame buffers), so page faults of
    // a 250 MB allocation are not what is measured.
    let copy = best_of(reps, || {
        let t = Instant::now();
        let mut out: Vec<u8> = Vec::with_capacity(2 << 20);
        for c in &chunks {
            if out.len() > 1 << 20 {
                std::hint::black_box(&out);
                out.clear();
            }
            out.extend_from_slice(c);
        }
        std::hint::black_box(&out);
        t.elapsed()
    });
    let ffmpeg = |f: &Path| {
        best_of(3, || {
            let t = Instant::now();
            let _ = Command::new("ffmpeg")
                .args(["-hide_banner", "-loglevel", "error", "-f", "mpeg", "-i"])
                .arg(f)
                .args(["-map", "0:v", "-c", "copy", "-f", "null", "-"])
                .status();
            t.elapsed()
        })
    };
    let (ff_big, ff_one) = (ffmpeg(&ps_file), ffmpeg(&one_file));
    let ff = ff_big.saturating_sub(ff_one).max(Duration::from_micros(1));
    let rate = |d: Duration| mb / d.as_secs_f64();
    println!(
        "gateway PsDemuxer: {:>8.0} MB/s   copy baseline: {:>8.0} MB/s   ffmpeg -f mpeg -c copy: {:>6.0} MB/s (start-up subtracted)",
        rate(demux),
        rate(copy),
        rate(ff)
    );
    println!(
        "ratios: demux time / copy time {:.2}x; gateway demux throughput / ffmpeg's {:.1}x",
        demux.as_secs_f64() / copy.as_secs_f64(),
        ff.as_secs_f64() / demux.as_secs_f64()
    );

    // Streams through receive + demux + record, then the same with a
    // relay leg per stream (the baseline is the first run of each count).
    println!("\n## Streams at 4 Mbit/s through receive + PS demux + record (/dev/shm)");
    println!(
        "{:>8} {:>10} {:>12} {:>12} {:>10} {:>14} {:>12}",
        "streams", "Mbit/s", "pkts sent", "pkts recv", "frames", "gw CPU %core", "%core/stream"
    );
    let counts: &[usize] = if quick { &[10, 100] } else { &[10, 100, 500] };
    let secs = if quick { 3.0 } else { 5.0 };
    let shm = if Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from(format!("/dev/shm/gw-mediabench-{}", std::process::id()))
    } else {
        dir.path().join("rec")
    };
    let frame_pkts = rtp_frames(&aus);
    let bits = frame_pkts.iter().flatten().map(|p| p.len()).sum::<usize>() as f64 * 8.0
        / frame_pkts.len() as f64
        * 25.0
        / 1e6;
    let mut pairs = Vec::new();
    for &n in counts {
        let base = run_streams(dir.path(), &shm, &frame_pkts, n, secs, false)?;
        println!(
            "{:>8} {:>10.1} {:>12} {:>12} {:>10} {:>14.1} {:>12.3}",
            n,
            bits * n as f64,
            base.sent,
            base.recv,
            base.frames,
            base.share,
            base.share / n as f64
        );
        let relay = run_streams(dir.path(), &shm, &frame_pkts, n, secs, true)?;
        pairs.push((n, base, relay));
    }
    println!("(goal: 500 streams on one core = under 100 %core in the 500 row; the sender shares the machine)");

    println!(
        "\n## relay: the same streams, each also forwarded (`forward = [\"127.0.0.1:<sink>\"]`, the Forward path of relay legs) to sink sockets of this process"
    );
    println!(
        "{:>8} {:>10} {:>10} {:>12} {:>10} {:>12} {:>14} {:>13} {:>13} {:>11} {:>7}",
        "streams",
        "pkts sent",
        "pkts recv",
        "pkts relayed",
        "sink recv",
        "errors",
        "base %c/stream",
        "relay %c/str",
        "extra %c/str",
        "relay CPU %",
        "ratio"
    );
    for (n, base, relay) in &pairs {
        let (b, r) = (base.share / *n as f64, relay.share / *n as f64);
        println!(
            "{:>8} {:>10} {:>10} {:>12} {:>10} {:>12} {:>14.3} {:>13.3} {:>13.3} {:>10.0}% {:>7.2}",
            n,
            relay.sent,
            relay.recv,
            relay.relayed,
            relay.sink,
            relay.relay_errors,
            b,
            r,
            r - b,
            (r - b) / b.max(1e-9) * 100.0,
            r / b.max(1e-9)
        );
    }
    println!(
        "(%c = % of one core, gateway CPU only (10 ms ticks: the 10-stream row is coarse). base = receive + demux + \
         record, measured just before in this run; relay CPU % = extra / base; ratio = relay / base per stream. \
         pkts relayed and errors = the gateway's forward counters, sink recv = what arrived here. On loopback the \
         delivery into the sink sockets runs in the gateway's send calls and is counted in its CPU)"
    );
    Ok(())
}
