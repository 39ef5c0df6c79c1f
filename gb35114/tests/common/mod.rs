//! Helpers shared by the integration tests: a deterministic PRNG, hex, the
//! machine's `openssl` and `ffmpeg` as independent implementations, and a
//! bit writer for synthetic slice headers.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Stdio};

/// xorshift64* PRNG: deterministic test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        for b in a.iter_mut() {
            *b = self.next() as u8;
        }
        a
    }
}

pub fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

pub fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(s).expect("test vector hex")
}

/// Runs a tool with `input` on stdin and returns its stdout. Panics (fails
/// the test) when the tool is missing or fails: these cross-checks must not
/// be skipped silently.
pub fn run_tool(tool: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "`{tool}` is required by this test as an independent implementation \
                 (CI installs it), but it could not be started: {e}"
            )
        });
    let mut stdin = child.stdin.take().expect("stdin");
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait for tool");
    let _ = writer.join();
    assert!(
        out.status.success(),
        "`{tool} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
    run_tool("openssl", args, input)
}

/// `openssl enc -<cipher> -K <key> [-iv <iv>] -nosalt [-nopad]` over `data`.
pub fn openssl_enc(
    cipher: &str,
    key: &[u8],
    iv: Option<&[u8]>,
    data: &[u8],
    nopad: bool,
) -> Vec<u8> {
    let k = hex(key);
    let ivh = iv.map(hex);
    let mut args = vec!["enc", cipher, "-K", &k, "-nosalt"];
    if let Some(ivh) = ivh.as_deref() {
        args.push("-iv");
        args.push(ivh);
    }
    if nopad {
        args.push("-nopad");
    }
    openssl(&args, data)
}

pub fn openssl_sm3(data: &[u8]) -> Vec<u8> {
    openssl(&["dgst", "-sm3", "-binary"], data)
}

pub fn openssl_hmac_sm3(key: &[u8], data: &[u8]) -> Vec<u8> {
    let opt = format!("hexkey:{}", hex(key));
    openssl(
        &["dgst", "-sm3", "-mac", "HMAC", "-macopt", &opt, "-binary"],
        data,
    )
}

/// Encodes `frames` frames of the lavfi test source with ffmpeg into an
/// Annex-B elementary stream. `codec`: "libx264" or "libx265".
pub fn ffmpeg_stream(codec: &str, size: &str, frames: u32, extra: &[&str]) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!(
        "gb35114-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (fmt, name) = if codec == "libx265" {
        ("hevc", "out.h265")
    } else {
        ("h264", "out.h264")
    };
    let path = dir.join(name);
    let src = format!("testsrc=size={size}:rate=25");
    let frames = frames.to_string();
    let mut args: Vec<&str> = vec![
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-f",
        "lavfi",
        "-i",
        &src,
        "-frames:v",
        &frames,
        "-pix_fmt",
        "yuv420p",
        "-c:v",
        codec,
    ];
    args.extend_from_slice(extra);
    if codec == "libx264" {
        args.extend_from_slice(&["-bsf:v", "h264_mp4toannexb"]);
    } else if !extra.contains(&"-x265-params") {
        args.extend_from_slice(&["-x265-params", "log-level=error"]);
    }
    let p = path.to_string_lossy().to_string();
    args.extend_from_slice(&["-f", fmt, "-y", &p]);
    run_tool("ffmpeg", &args, &[]);
    let data = std::fs::read(&path).expect("ffmpeg output");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(data.len() > 1000, "ffmpeg produced {} bytes", data.len());
    data
}

/// MSB-first bit writer producing an RBSP (with rbsp_trailing_bits).
#[derive(Default)]
pub struct Bits {
    out: Vec<u8>,
    cur: u8,
    n: u32,
}

impl Bits {
    pub fn bit(&mut self, b: u32) -> &mut Self {
        self.cur = (self.cur << 1) | (b as u8 & 1);
        self.n += 1;
        if self.n == 8 {
            self.out.push(self.cur);
            self.cur = 0;
            self.n = 0;
        }
        self
    }
    pub fn bits(&mut self, v: u32, n: u32) -> &mut Self {
        for i in (0..n).rev() {
            self.bit((v >> i) & 1);
        }
        self
    }
    pub fn ue(&mut self, v: u32) -> &mut Self {
        let x = u64::from(v) + 1;
        let len = 64 - x.leading_zeros();
        for _ in 0..len - 1 {
            self.bit(0);
        }
        for i in (0..len).rev() {
            self.bit(((x >> i) & 1) as u32);
        }
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        for &x in b {
            self.bits(u32::from(x), 8);
        }
        self
    }
    pub fn finish(&mut self) -> Vec<u8> {
        self.bit(1);
        while self.n != 0 {
            self.bit(0);
        }
        std::mem::take(&mut self.out)
    }
}

/// Emulation prevention (reference implementation for the tests).
pub fn escape(rbsp: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut zeros = 0;
    for &b in rbsp {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    if zeros >= 2 {
        out.push(3);
    }
    out
}

pub fn unescape(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut zeros = 0;
    for &b in p {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    out
}

/// Does an escaped NAL payload contain a sequence Annex B forbids inside a
/// NAL unit (00 00 00 / 00 00 01 / 00 00 02) or end in 00?
pub fn has_forbidden(payload: &[u8]) -> bool {
    payload
        .windows(3)
        .any(|w| w[0] == 0 && w[1] == 0 && w[2] <= 2)
        || payload.last() == Some(&0)
}
