//! SM4 media-encryption benchmarks (crate `gb35114`).
//!
//! Rows, in MB/s (10^6 bytes per second):
//! - the SM4 block function (libsm's `Sm4Cipher::encrypt` behind
//!   `Sm4::encrypt_block`), our `ofb_apply` and `ctr_apply` on 64 KiB buffers;
//! - SM3 and HMAC-SM3 (libsm's one-shot SM3);
//! - `sm4-nal-ofb`: `NalDecryptor` over a real H.264 stream (ffmpeg,
//!   1280x720, ~4 Mbit/s), encrypted once, decrypted repeatedly; MB/s of
//!   access unit bytes;
//! - `srtp-sm4`: `SrtpSender::protect` and `SrtpReceiver::unprotect` of
//!   1400-byte RTP packets;
//! - in the same run, `openssl speed -evp sm4-ofb` / `sm4-ctr` as the
//!   reference, and ours/openssl per profile;
//! - where the time goes: the SM4 keystream, HMAC and the rest, timed
//!   separately over the same bytes.
//!
//! `crypto-bench [--quick]`: quick < 20 s, full < 90 s. Needs ffmpeg and
//! openssl for the stream and reference rows (skipped with a note if absent).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use gb35114::nal::{
    encrypt_access_unit, is_vcl, split_access_units, split_nal_units, KeyRing, NalCodec,
    NalDecryptor,
};
use gb35114::sm3::{sm3, HmacSm3};
use gb35114::sm4::{ctr_apply, ofb_apply, Sm4};
use gb35114::srtp::{MasterKey, SrtpReceiver, SrtpSender};

struct Cfg {
    quick: bool,
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

fn encode_h264(frames: u32) -> Result<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!("crypto-bench-{}", std::process::id()));
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

/// `openssl speed -evp <cipher>`: MB/s per block size (1024, 8192, 16384 when present).
fn openssl_speed(cipher: &str, cfg: &Cfg) -> Result<Vec<(usize, f64)>> {
    let secs = cfg.openssl_seconds.to_string();
    let mut cmd = Command::new("openssl");
    cmd.args(["speed", "-seconds", &secs]);
    if cfg.quick {
        cmd.args(["-bytes", "16384"]);
    }
    let out = cmd
        .args(["-evp", cipher])
        .output()
        .context("running openssl speed")?;
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
    Ok(sizes
        .into_iter()
        .zip(values)
        .filter(|(s, _)| matches!(s, 1024 | 8192 | 16384))
        .collect())
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let cfg = Cfg {
        quick,
        budget: Duration::from_millis(if quick { 250 } else { 1500 }),
        frames: if quick { 100 } else { 250 },
        openssl_seconds: if quick { 1 } else { 2 },
    };
    let t0 = Instant::now();
    let mut rng = Rng(0x00c0_ffee);
    let key: [u8; 16] = rng.array();
    let iv: [u8; 16] = rng.array();
    let c = Sm4::new(&key);
    println!(
        "crypto-bench ({}), MB/s = 10^6 bytes/s",
        if quick { "quick" } else { "full" }
    );
    println!("{:<44} {:>10}", "what", "MB/s");

    // --- primitives
    let mut block = [0u8; 16];
    let blocks = 65536usize;
    let (sm4_block, _) = measure(&cfg, blocks * 16, 10_000, || {
        for _ in 0..blocks {
            c.encrypt_block(&mut block);
        }
    });
    row(
        "SM4 block (libsm Sm4Cipher::encrypt)",
        sm4_block,
        "1 block at a time",
    );
    let mut buf = rng.bytes(64 * 1024);
    let (ofb, _) = measure(&cfg, buf.len(), 100_000, || ofb_apply(&c, &iv, &mut buf));
    row("ofb_apply (64 KiB)", ofb, "");
    let (ctr, _) = measure(&cfg, buf.len(), 100_000, || ctr_apply(&c, &iv, &mut buf));
    row("ctr_apply (64 KiB)", ctr, "");
    let (sm3_rate, _) = measure(&cfg, buf.len(), 100_000, || {
        std::hint::black_box(sm3(&buf));
    });
    row("SM3 (libsm, 64 KiB)", sm3_rate, "");
    let h = HmacSm3::new(&rng.bytes(32));
    let pkt = rng.bytes(1404);
    let mut scratch = Vec::new();
    let msgs = 256usize;
    let (hmac_rate, _) = measure(&cfg, msgs * pkt.len(), 100_000, || {
        for _ in 0..msgs {
            std::hint::black_box(h.mac_with_buffer(&[&pkt], &mut scratch));
        }
    });
    row("HMAC-SM3 (1404-byte messages)", hmac_rate, "");

    // --- sm4-nal-ofb on a real stream
    let mut nal_rate = None;
    match encode_h264(cfg.frames) {
        Err(e) => println!(
            "{:<44} {:>10}  ffmpeg unavailable: {e:#}",
            "sm4-nal-ofb decrypt", "-"
        ),
        Ok(stream) => {
            let aus: Vec<Vec<u8>> = split_access_units(NalCodec::H264, &stream)
                .into_iter()
                .map(|a| a.to_vec())
                .collect();
            let enc: Vec<Vec<u8>> = aus
                .iter()
                .map(|au| encrypt_access_unit(NalCodec::H264, au, 1, &c, &rng.array()))
                .collect();
            let enc_bytes: usize = enc.iter().map(|a| a.len()).sum();
            let vcl_bytes: usize = aus
                .iter()
                .flat_map(|a| split_nal_units(a))
                .filter(|n| is_vcl(NalCodec::H264, n))
                .map(|n| n.len())
                .sum();
            let mut keys = KeyRing::new();
            keys.insert(1, 1, &key);
            let mut d = NalDecryptor::new(NalCodec::H264);
            let mut out = Vec::new();
            let mut ok = true;
            // check once, outside the timing
            for (i, e) in enc.iter().enumerate() {
                d.push(e.clone(), false, i, &keys, &mut out);
            }
            d.finish(&mut out);
            if out.len() != aus.len() || out.iter().any(|(a, i)| *a != aus[*i]) {
                ok = false;
            }
            let (rate, per) = measure(&cfg, enc_bytes, 1000, || {
                for e in &enc {
                    out.clear();
                    d.push(e.clone(), false, 0, &keys, &mut out);
                }
            });
            let mbit = stream.len() as f64 * 8.0 / (f64::from(cfg.frames) / 25.0) / 1e6;
            row(
                "sm4-nal-ofb NalDecryptor (H.264 720p)",
                rate,
                &format!(
                    "{} AUs, {:.1} MB, {mbit:.1} Mbit/s: {:.0} streams/core{}",
                    aus.len(),
                    enc_bytes as f64 / 1e6,
                    (rate * 8.0) / mbit,
                    if ok { "" } else { "  ROUND TRIP FAILED" }
                ),
            );
            // where the time goes: the SM4 keystream over the same RBSP bytes
            let mut ks = vec![0u8; vcl_bytes];
            let (_, ks_per) = measure(&cfg, vcl_bytes, 1000, || ofb_apply(&c, &iv, &mut ks));
            let copy_per = {
                let (_, p) = measure(&cfg, enc_bytes, 1000, || {
                    for e in &enc {
                        std::hint::black_box(e.clone());
                    }
                });
                p
            };
            println!(
                "  where the time goes (nal): SM4 keystream {:.0}%, input copy {:.0}%, \
                 EP/parsing/output {:.0}%",
                100.0 * ks_per / per,
                100.0 * copy_per / per,
                100.0 * (per - ks_per - copy_per).max(0.0) / per
            );
            nal_rate = Some(rate);
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
    row("srtp-sm4 protect (1400-byte RTP)", protect_rate, "");
    row(
        "srtp-sm4 unprotect (1400-byte RTP)",
        unprotect_rate,
        &format!(
            "{:.0} kpkt/s{}",
            n_pkts as f64 / unprotect_per / 1e3,
            if failures > 0 { "  FAILURES" } else { "" }
        ),
    );
    // where the time goes: HMAC over header+payload+ROC, CTR over the payload
    let (_, hmac_per) = measure(&cfg, bytes, 1000, || {
        for p in &srtp {
            std::hint::black_box(
                h.mac_with_buffer(&[&p[..p.len() - 10], &[0, 0, 0, 0]], &mut scratch),
            );
        }
    });
    let mut pay = vec![0u8; 1388];
    let (_, ctr_per) = measure(&cfg, bytes, 1000, || {
        for _ in 0..n_pkts {
            ctr_apply(&c, &iv, &mut pay);
        }
    });
    println!(
        "  where the time goes (srtp unprotect): HMAC-SM3 {:.0}%, SM4-CTR {:.0}%, rest {:.0}%",
        100.0 * hmac_per / unprotect_per,
        100.0 * ctr_per / unprotect_per,
        100.0 * (unprotect_per - hmac_per - ctr_per).max(0.0) / unprotect_per
    );

    // --- openssl reference, same run
    let mut ossl = Vec::new();
    for cipher in ["sm4-ofb", "sm4-ctr"] {
        match openssl_speed(cipher, &cfg) {
            Ok(cols) => {
                let text: Vec<String> =
                    cols.iter().map(|(s, v)| format!("{s} B: {v:.1}")).collect();
                let big = cols.iter().find(|(s, _)| *s == 16384).map(|(_, v)| *v);
                row(
                    &format!("openssl speed -evp {cipher} (16384 B)"),
                    big.unwrap_or(f64::NAN),
                    &text.join(", "),
                );
                ossl.push((cipher, big));
            }
            Err(e) => {
                println!(
                    "{:<44} {:>10}  {e:#}",
                    format!("openssl speed -evp {cipher}"),
                    "-"
                );
                ossl.push((cipher, None));
            }
        }
    }
    let ofb_ref = ossl.first().and_then(|(_, v)| *v);
    let ctr_ref = ossl.get(1).and_then(|(_, v)| *v);
    println!("ratios ours/openssl:");
    if let Some(r) = ofb_ref {
        println!(
            "  ofb_apply / openssl sm4-ofb                 {:.2}",
            ofb / r
        );
        if let Some(n) = nal_rate {
            println!("  sm4-nal-ofb decrypt / openssl sm4-ofb       {:.2}", n / r);
        }
    }
    if let Some(r) = ctr_ref {
        println!(
            "  ctr_apply / openssl sm4-ctr                 {:.2}",
            ctr / r
        );
        println!(
            "  srtp-sm4 unprotect / openssl sm4-ctr        {:.2}",
            unprotect_rate / r
        );
        println!(
            "  srtp-sm4 protect / openssl sm4-ctr          {:.2}",
            protect_rate / r
        );
    }
    println!("total {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
