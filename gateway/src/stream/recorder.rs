//! The recorder: Annex-B elementary stream and/or the original PS,
//! rotated by size or age at the next key frame.

use std::{
    fs::File,
    io::{BufWriter, Write},
    time::{Duration, Instant},
};

use media::{Codec, Frame, FrameKind};

use crate::config::RecordConfig;

pub(super) fn codec_name(c: Codec) -> &'static str {
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

pub(super) struct OpenFile {
    pub(super) w: BufWriter<File>,
    pub(super) bytes: u64,
    pub(super) started: Instant,
}

/// Writes frames (and/or PS) to rotating files.
pub struct Recorder {
    pub(super) cfg: RecordConfig,
    pub(super) base: String,
    pub(super) es: Option<OpenFile>,
    pub(super) ps: Option<OpenFile>,
    pub files: Vec<String>,
    pub(super) rotate_pending: bool,
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

    pub(super) fn open(&mut self, ext: &str) -> std::io::Result<OpenFile> {
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

    pub(super) fn due(&self, f: &OpenFile) -> bool {
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
        if f.keyframe {
            // Whole groups of pictures on disk: a crash (kill -9) loses at
            // most the one being written, and the file stays decodable.
            if let Some(o) = &mut self.es {
                o.w.flush()?;
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
            if o.bytes == f.data.len() as u64 {
                // The file's first key frame goes to disk at once: no
                // recording a crash leaves behind is empty.
                o.w.flush()?;
            }
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

/// File name base of a recording.
pub fn record_base(device: &str, channel: &str, id: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    };
    format!("{}_{}_{}", clean(device), clean(channel), clean(id))
}
