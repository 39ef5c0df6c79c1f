//! SM4/SM3 media-encryption benchmarks (crates `gmcrypt`, `gb35114`).
//!
//! Rows, in MB/s (10^6 bytes per second), on the CPU printed first:
//! - per SM4 implementation this CPU runs (`gmcrypt::sm4::Impl`): CTR on
//!   64 KiB, OFB on one 64 KiB stream (sequential), OFB on 4 and on 16
//!   lanes of 16 KiB (`ofb_lanes`: slices of an access unit) and on 64 lanes
//!   under 16 keys (`ofb_lanes_keyed`: 16 streams x 4 slices); libsm's
//!   block function (the previous implementation) as a baseline;
//! - SM3 and HMAC-SM3 (1404-byte messages): ours per implementation, one
//!   message at a time and, for the multi-buffer ones, 32 per call
//!   (`mac_many`); libsm's SM3;
//! - `sm4-nal-ofb`: `NalDecryptor` over real H.264 streams (ffmpeg, 720p,
//!   ~4 Mbit/s), one slice and four slices per picture; MB/s of access-unit
//!   bytes and streams per core at the stream's bit rate;
//! - `srtp-sm4`: `SrtpSender::protect` / `SrtpReceiver::unprotect` of
//!   1400-byte RTP packets, and `unprotect_batch` over batches of 16 (what
//!   the gateway's `recvmmsg` takes at once), with streams per core at
//!   4 Mbit/s;
//! - in the same run, `openssl speed -evp sm4-ofb` / `sm4-ctr` and
//!   `openssl speed -hmac sm3` as the references, and ours/openssl with the
//!   goals of issue 15 beside them;
//! - where the time goes in each profile.
//!
//! `crypto-bench [--quick]`: quick < 40 s, full < 2 min. Needs ffmpeg and
//! openssl for the stream and reference rows (skipped with a note if absent).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use gb35114::nal::{
    encrypt_access_unit, is_vcl, split_access_units, split_nal_units, KeyRing, NalCodec,
    NalDecryptor,
};
use gb35114::sm4::Sm4;
use gb35114::srtp::{MasterKey, SrtpReceiver, SrtpSender};
use gmcrypt::sm3::{self, HmacSm3};
use gmcrypt::sm4::{self as gm4, Impl, OfbUnit};

struct Cfg {
    /// Time budget of one measurement.
    budget: Duration,
    /// Video length for the stream row.
    frames: u32,
    openssl_seconds: u32,
}

/// Runs `f` (which processes `bytes` bytes) repeatedly until the budget is
/// spent (at least 3 times, at most `max_iter` times); returns (MB/s, seconds)
/// of the fastest call, which is robust against other load on the machine.
fn measure(cfg: &Cfg, bytes: usize, max_iter: u64, mut f: impl FnMut()) -> (f64, f64) {
    f(); // warm-up
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut n = 0u64;
    while n < max_iter && (n < 3 || start.elapsed() < cfg.budget) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        n += 1;
    }
    let best = best.max(1e-9);
    (bytes as f64 / best / 1e6, best)
}

fn row(name: &str, mbps: f64, note: &str) {
    println!("{name:<44} {mbps:>10.1}  {note}");
}

/// xorshift64* for test data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        for b in a.iter_mut() {
            *b = self.next() as u8;
        }
        a
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn encode_h264(frames: u32, slices: u32) -> Result<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!("crypto-bench-{}-{slices}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let out = dir.join("src.h264");
    let st = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg("testsrc2=size=1280x720:rate=25")
        // a little temporal noise so x264 actually spends ~4 Mbit/s
        .args([
            "-vf",
            "noise=alls=12:allf=t",
            "-frames:v",
            &frames.to_string(),
        ])
        .args([
            "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "veryfast",
        ])
        .args(["-b:v", "4M", "-maxrate", "4M", "-bufsize", "8M", "-g", "50"])
        .args(["-x264-params", &format!("slices={slices}")])
        .args(["-bsf:v", "h264_mp4toannexb", "-f", "h264"])
        .arg(&out)
        .status()
        .context("running ffmpeg")?;
    if !st.success() {
        bail!("ffmpeg failed");
    }
    let data = std::fs::read(&out)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(data)
}

/// `openssl speed -evp <cipher>` (or `-hmac sm3` for "hmac(sm3)") on
/// `bytes`-byte buffers: MB/s.
fn openssl_speed(cipher: &str, bytes: usize, cfg: &Cfg) -> Result<f64> {
    let secs = cfg.openssl_seconds.to_string();
    let mut cmd = Command::new("openssl");
    cmd.args(["speed", "-seconds", &secs, "-bytes", &bytes.to_string()]);
    if cipher == "hmac(sm3)" {
        cmd.args(["-hmac", "sm3"]);
    } else {
        cmd.args(["-evp", cipher]);
    }
    let out = cmd.output().context("running openssl speed")?;
    if !out.status.success() {
        bail!(
            "openssl speed failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // "type  16 bytes  64 bytes ...", then "SM4-OFB  164222.40k ..." ('k' = 1000 bytes/s)
    let sizes: Vec<usize> = text
        .lines()
        .find(|l| l.starts_with("type"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse::<usize>().ok())
                .collect()
        })
        .unwrap_or_default();
    let values: Vec<f64> = text
        .lines()
        .find(|l| {
            l.to_ascii_uppercase()
                .starts_with(&cipher.to_ascii_uppercase())
        })
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter_map(|w| w.trim_end_matches('k').parse::<f64>().ok())
                .map(|k| k * 1000.0 / 1e6)
                .collect()
        })
        .unwrap_or_default();
    if sizes.is_empty() || sizes.len() != values.len() {
        bail!("could not parse openssl speed output:\n{text}");
    }
    sizes
        .into_iter()
        .zip(values)
        .find(|(s, _)| *s == bytes)
        .map(|(_, v)| v)
        .with_context(|| format!("no {bytes}-byte column in:\n{text}"))
}

/// One `sm4-nal-ofb` stream row: encrypt once, decrypt repeatedly. Returns
/// (MB/s of access-unit bytes, stream bit rate in Mbit/s).
fn nal_row(cfg: &Cfg, rng: &mut Rng, key: &[u8; 16], slices: u32) -> Result<(f64, f64)> {
    let stream = encode_h264(cfg.frames, slices)?;
    let c = Sm4::new(key);
    let aus: Vec<Vec<u8>> = split_access_units(NalCodec::H264, &stream)
        .into_iter()
        .map(|a| a.to_vec())
        .collect();
    let enc: Vec<Vec<u8>> = aus
        .iter()
        .map(|au| encrypt_access_unit(NalCodec::H264, au, 1, &c, &rng.array()))
        .collect();
    let enc_bytes: usize = enc.iter().map(|a| a.len()).sum();
    let vcl: Vec<usize> = aus
        .iter()
        .flat_map(|a| split_nal_units(a))
        .filter(|n| is_vcl(NalCodec::H264, n))
        .map(|n| n.len())
        .collect();
    let vcl_bytes: usize = vcl.iter().sum();
    let mut keys = KeyRing::new();
    keys.insert(1, 1, key);
    let mut d = NalDecryptor::new(NalCodec::H264);
    let mut out = Vec::new();
    // Round trip checked once, outside the timing.
    for (i, e) in enc.iter().enumerate() {
        d.push(e.clone(), false, i, &keys, &mut out);
    }
    d.finish(&mut out);
    let ok = out.len() == aus.len() && out.iter().all(|(a, i)| *a == aus[*i]);
    let (rate, per) = measure(cfg, enc_bytes, 1000, || {
        for e in &enc {
            out.clear();
            d.push(e.clone(), false, 0, &keys, &mut out);
        }
    });
    let mbit = stream.len() as f64 * 8.0 / (f64::from(cfg.frames) / 25.0) / 1e6;
    row(
        &format!("sm4-nal-ofb decrypt, {slices} slice(s)/picture"),
        rate,
        &format!(
            "{} AUs, {} slices, {:.1} MB, {mbit:.1} Mbit/s: {:.0} streams/core{}",
            aus.len(),
            vcl.len(),
            enc_bytes as f64 / 1e6,
            (rate * 8.0) / mbit,
            if ok { "" } else { "  ROUND TRIP FAILED" }
        ),
    );
    // Where the time goes: the keystream over the same slices, in lanes
    // of one access unit's slices.
    let per_au = (vcl.len() / aus.len().max(1)).max(1);
    let mut ks: Vec<Vec<u8>> = vcl.iter().map(|&n| vec![0u8; n]).collect();
    let iv: [u8; 16] = rng.array();
    let (_, ks_per) = measure(cfg, vcl_bytes, 1000, || {
        for group in ks.chunks_mut(per_au) {
            let mut units: Vec<OfbUnit<'_>> =
                group.iter_mut().map(|d| OfbUnit { iv, data: d }).collect();
            c.ofb_lanes(&mut units);
        }
    });
    let (_, copy_per) = measure(cfg, enc_bytes, 1000, || {
        for e in &enc {
            std::hint::black_box(e.clone());
        }
    });
    println!(
        "  where the time goes: SM4 keystream {:.0}%, input copy {:.0}%, EP/parsing/output {:.0}%",
        100.0 * ks_per / per,
        100.0 * copy_per / per,
        100.0 * (per - ks_per - copy_per).max(0.0) / per
    );
    Ok((rate, mbit))
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let cfg = Cfg {
        budget: Duration::from_millis(if quick { 200 } else { 1000 }),
        frames: if quick { 100 } else { 250 },
        openssl_seconds: if quick { 1 } else { 2 },
    };
    let t0 = Instant::now();
    let mut rng = Rng(0x00c0_ffee);
    let key: [u8; 16] = rng.array();
    let iv: [u8; 16] = rng.array();
    println!(
        "crypto-bench ({}) on {}; MB/s = 10^6 bytes/s",
        if quick { "quick" } else { "full" },
        gateway_tests::cpu_model()
    );
    let (s4, s3) = (gm4::selected(), sm3::selected());
    println!(
        "default SM4 {} ({}), SM3 {} ({})",
        s4.imp, s4.reason, s3.imp, s3.reason
    );
    let impls: Vec<Impl> = Impl::ALL
        .into_iter()
        .filter(|i| match i.unavailable() {
            None => true,
            Some(why) => {
                println!("skipped: SM4 {i}: {why}");
                false
            }
        })
        .collect();

    // --- SM4 per implementation
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>9} {:>12}",
        "SM4 impl", "CTR", "OFB x1", "OFB x4", "OFB x16", "OFB 16 keys"
    );
    let big = rng.bytes(64 * 1024);
    let mut ctr_by: Vec<(Impl, f64)> = Vec::new();
    let mut keyed_by: Vec<(Impl, f64)> = Vec::new();
    let lane_len = 16 * 1024;
    let keys16: Vec<[u8; 16]> = (0..16).map(|_| rng.array()).collect();
    for &imp in &impls {
        let c = gm4::Sm4::with_impl(&key, imp)?;
        let mut buf = big.clone();
        let (ctr, _) = measure(&cfg, buf.len(), 100_000, || c.ctr_apply(&iv, &mut buf));
        let (ofb1, _) = measure(&cfg, buf.len(), 100_000, || c.ofb_apply(&iv, &mut buf));
        let lanes = |n: usize| {
            let mut data: Vec<Vec<u8>> = (0..n).map(|_| vec![0u8; lane_len]).collect();
            measure(&cfg, n * lane_len, 100_000, || {
                let mut units: Vec<OfbUnit<'_>> =
                    data.iter_mut().map(|d| OfbUnit { iv, data: d }).collect();
                c.ofb_lanes(&mut units);
            })
            .0
        };
        let (ofb4, ofb16) = (lanes(4), lanes(16));
        // 16 streams x 4 slices: 64 lanes, 16 keys.
        let ciphers: Vec<gm4::Sm4> = keys16
            .iter()
            .map(|k| gm4::Sm4::with_impl(k, imp))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&gm4::Sm4> = (0..64).map(|i| &ciphers[i / 4]).collect();
        let mut data: Vec<Vec<u8>> = (0..64).map(|_| vec![0u8; 4096]).collect();
        let (keyed, _) = measure(&cfg, 64 * 4096, 100_000, || {
            let mut units: Vec<OfbUnit<'_>> =
                data.iter_mut().map(|d| OfbUnit { iv, data: d }).collect();
            gm4::ofb_lanes_keyed(&refs, &mut units);
        });
        println!(
            "{:<14} {ctr:>9.1} {ofb1:>9.1} {ofb4:>9.1} {ofb16:>9.1} {keyed:>12.1}",
            imp.name()
        );
        ctr_by.push((imp, ctr));
        keyed_by.push((imp, keyed));
    }
    // The previous implementation: libsm's block function, one block at a time.
    let old = libsm::sm4::cipher::Sm4Cipher::new(&key).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut buf = big.clone();
    let (libsm_ofb, _) = measure(&cfg, buf.len(), 100_000, || {
        let mut ks = iv;
        for chunk in buf.chunks_mut(16) {
            if let Ok(o) = old.encrypt(&ks) {
                ks = o;
            }
            for (d, k) in chunk.iter_mut().zip(ks) {
                *d ^= k;
            }
        }
    });
    row(
        "libsm Sm4Cipher OFB (previous, baseline)",
        libsm_ofb,
        "1 block at a time",
    );

    // --- SM3
    let pkt = rng.bytes(1404);
    let msgs = 256usize;
    let mut hmac_rate = 0.0f64;
    for imp in sm3::Impl::ALL {
        if let Some(why) = imp.unavailable() {
            println!("skipped: SM3 {imp}: {why}");
            continue;
        }
        let (rate, _) = measure(&cfg, big.len(), 100_000, || {
            let mut h = sm3::Sm3::with_impl(imp);
            h.update(&big);
            std::hint::black_box(h.finalize());
        });
        row(&format!("SM3 {imp} (64 KiB)"), rate, "");
        let h = HmacSm3::with_impl(&rng.bytes(32), imp);
        let (hr, _) = measure(&cfg, msgs * pkt.len(), 100_000, || {
            for _ in 0..msgs {
                std::hint::black_box(h.mac(&[&pkt]));
            }
        });
        row(
            &format!("HMAC-SM3 {imp} (1404-byte messages)"),
            hr,
            "one at a time",
        );
        let mut rate = hr;
        if imp.lanes() > 1 {
            let parts: Vec<[&[u8]; 1]> = (0..msgs).map(|_| [&pkt[..]]).collect();
            let batch: Vec<&[&[u8]]> = parts.iter().map(|p| &p[..]).collect();
            let mut out = vec![[0u8; 32]; msgs];
            let (br, _) = measure(&cfg, msgs * pkt.len(), 100_000, || {
                for c in batch.chunks(32) {
                    h.mac_many(c, &mut out[..c.len()]);
                }
            });
            row(
                &format!("HMAC-SM3 {imp} (1404-byte messages, batches of 32)"),
                br,
                &format!("mac_many, {} lanes", imp.lanes()),
            );
            rate = br;
        }
        if imp == s3.imp {
            hmac_rate = rate;
        }
    }
    let (libsm_sm3, _) = measure(&cfg, big.len(), 100_000, || {
        std::hint::black_box(libsm::sm3::hash::Sm3Hash::new(&big).get_hash());
    });
    row("SM3 libsm (64 KiB, previous)", libsm_sm3, "");

    // --- sm4-nal-ofb on real streams (default implementation)
    let mut nal = Vec::new();
    for slices in [1u32, 4] {
        match nal_row(&cfg, &mut rng, &key, slices) {
            Ok(r) => nal.push((slices, Some(r))),
            Err(e) => {
                println!(
                    "{:<44} {:>10}  ffmpeg unavailable: {e:#}",
                    format!("sm4-nal-ofb decrypt, {slices} slice(s)"),
                    "-"
                );
                nal.push((slices, None));
            }
        }
    }

    // --- srtp-sm4
    let m = MasterKey {
        key: rng.array(),
        salt: rng.array(),
    };
    let n_pkts = 2048usize;
    let payload = rng.bytes(1388);
    let clear: Vec<Vec<u8>> = (0..n_pkts)
        .map(|i| {
            let seq = (65000 + i) as u16; // crosses the wrap
            let mut p = vec![0x80, 96];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&(i as u32 * 3600).to_be_bytes());
            p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
            p.extend_from_slice(&payload);
            p
        })
        .collect();
    let bytes = n_pkts * 1400;
    let mut out = Vec::with_capacity(1500);
    let (protect_rate, _) = measure(&cfg, bytes, 1000, || {
        let mut tx = SrtpSender::new(&m);
        for p in &clear {
            out.clear();
            let _ = tx.protect(p, &mut out);
        }
    });
    let mut tx = SrtpSender::new(&m);
    let srtp: Vec<Vec<u8>> = clear
        .iter()
        .map(|p| {
            let mut o = Vec::new();
            let _ = tx.protect(p, &mut o);
            o
        })
        .collect();
    let live = vec![(1u64, m.clone())];
    let mut failures = 0usize;
    let (unprotect_rate, unprotect_per) = measure(&cfg, bytes, 1000, || {
        let mut rx = SrtpReceiver::new();
        for p in &srtp {
            out.clear();
            if rx.unprotect(p, &live, &mut out).is_err() {
                failures += 1;
            }
        }
    });
    let mut batch_fail = 0usize;
    let (batch_rate, batch_per) = measure(&cfg, bytes, 1000, || {
        let mut rx = SrtpReceiver::new();
        for chunk in srtp.chunks(16) {
            let refs: Vec<&[u8]> = chunk.iter().map(|p| &p[..]).collect();
            rx.unprotect_batch(&refs, &live, |_, r| {
                if r.is_err() {
                    batch_fail += 1;
                }
            });
        }
    });
    row("srtp-sm4 protect (1400-byte RTP)", protect_rate, "");
    row(
        "srtp-sm4 unprotect (1400-byte RTP)",
        unprotect_rate,
        &format!(
            "{:.0} kpkt/s: {:.0} streams/core at 4 Mbit/s{}",
            n_pkts as f64 / unprotect_per / 1e3,
            unprotect_rate * 8.0 / 4.0,
            if failures > 0 { "  FAILURES" } else { "" }
        ),
    );
    row(
        "srtp-sm4 unprotect_batch (batches of 16)",
        batch_rate,
        &format!(
            "{:.0} kpkt/s: {:.0} streams/core at 4 Mbit/s{}",
            n_pkts as f64 / batch_per / 1e3,
            batch_rate * 8.0 / 4.0,
            if batch_fail > 0 { "  FAILURES" } else { "" }
        ),
    );
    let h = HmacSm3::new(&rng.bytes(32));
    let (_, hmac_per) = measure(&cfg, bytes, 1000, || {
        for p in &srtp {
            std::hint::black_box(h.mac(&[&p[..p.len() - 10], &[0, 0, 0, 0]]));
        }
    });
    let c = gm4::Sm4::new(&key);
    let mut pay = vec![0u8; 1388];
    let (_, ctr_per) = measure(&cfg, bytes, 1000, || {
        for _ in 0..n_pkts {
            c.ctr_apply(&iv, &mut pay);
        }
    });
    println!(
        "  where the time goes (srtp unprotect): HMAC-SM3 {:.0}%, SM4-CTR {:.0}%, rest {:.0}%",
        100.0 * hmac_per / unprotect_per,
        100.0 * ctr_per / unprotect_per,
        100.0 * (unprotect_per - hmac_per - ctr_per).max(0.0) / unprotect_per
    );

    // --- openssl, same run
    let reference = |what: &str, bytes: usize| match openssl_speed(what, bytes, &cfg) {
        Ok(v) => {
            row(&format!("openssl speed {what} ({bytes} B)"), v, "");
            Some(v)
        }
        Err(e) => {
            println!("{:<44} {:>10}  {e:#}", format!("openssl speed {what}"), "-");
            None
        }
    };
    let ofb_ref = reference("sm4-ofb", 16384);
    let ctr_ref = reference("sm4-ctr", 16384);
    let hmac_ref = reference("hmac(sm3)", 1404);

    println!("ratios ours/openssl (goal of issue 15 in brackets):");
    let ratio = |name: &str, ours: f64, r: Option<f64>, goal: &str| {
        if let Some(r) = r {
            println!("  {name:<52} {:>6.2}  {goal}", ours / r);
        }
    };
    for (imp, v) in &ctr_by {
        ratio(
            &format!("SM4-CTR {imp} / openssl sm4-ctr"),
            *v,
            ctr_ref,
            "[>= 5]",
        );
    }
    let default_ctr = ctr_by
        .iter()
        .find(|(i, _)| *i == s4.imp)
        .map(|(_, v)| *v)
        .unwrap_or(0.0);
    ratio(
        "srtp-sm4 unprotect / openssl sm4-ctr",
        unprotect_rate,
        ctr_ref,
        "[>= 3]",
    );
    ratio(
        "srtp-sm4 unprotect_batch (16) / openssl sm4-ctr",
        batch_rate,
        ctr_ref,
        "[>= 3]",
    );
    ratio(
        "srtp-sm4 protect / openssl sm4-ctr",
        protect_rate,
        ctr_ref,
        "",
    );
    for (slices, r) in &nal {
        if let Some((rate, _)) = r {
            ratio(
                &format!("sm4-nal-ofb decrypt {slices} slice(s) / openssl sm4-ofb"),
                *rate,
                ofb_ref,
                if *slices == 4 { "[>= 3]" } else { "" },
            );
        }
    }
    for (imp, v) in &keyed_by {
        ratio(
            &format!("OFB 16 streams x 4 slices {imp} / openssl sm4-ofb"),
            *v,
            ofb_ref,
            "[>= 3]",
        );
    }
    ratio(
        "HMAC-SM3 default (1404 B) / openssl hmac(sm3) (1404 B)",
        hmac_rate,
        hmac_ref,
        "[>= 1.5]",
    );
    ratio(
        "libsm OFB (previous) / openssl sm4-ofb",
        libsm_ofb,
        ofb_ref,
        "",
    );
    println!("streams per core (default implementations):");
    println!(
        "  srtp-sm4 unprotect at 4 Mbit/s                       {:>6.0}  [goal 1000]",
        unprotect_rate * 8.0 / 4.0
    );
    println!(
        "  srtp-sm4 unprotect_batch (16) at 4 Mbit/s            {:>6.0}  [goal 1000]",
        batch_rate * 8.0 / 4.0
    );
    for (slices, r) in &nal {
        if let Some((rate, mbit)) = r {
            println!(
                "  sm4-nal-ofb {slices} slice(s) at {mbit:.1} Mbit/s                   {:>6.0}",
                rate * 8.0 / mbit
            );
        }
    }
    println!(
        "  SM4-CTR keystream alone at 4 Mbit/s                  {:>6.0}",
        default_ctr * 8.0 / 4.0
    );
    println!("total {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
