//! MANSRTSP (GB/T 28181-2016 annex B): the playback controls a platform
//! sends in SIP INFO (`Content-Type: Application/MANSRTSP`) within a
//! playback dialog. The body is RTSP-like text:
//!
//! ```text
//! PLAY MANSRTSP/1.0\r\n
//! CSeq: 3\r\n
//! Scale: 2.0\r\n          (speed: 0.25, 0.5, 1, 2, 4, 8)
//! Range: npt=100-\r\n     (seek: seconds from the start of the playback)
//! \r\n
//! ```
//!
//! `PAUSE` with `PauseTime: now`; `PLAY` with `Range: npt=now-` resumes;
//! `TEARDOWN` ends.
//! Parsed leniently (header names case-insensitive, LF or CRLF), built
//! exactly as above.

/// A playback control.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Control {
    /// Go on (after a pause), at `scale` if given, from `seek` seconds if
    /// given.
    Play {
        scale: Option<f32>,
        seek: Option<u64>,
    },
    Pause,
    Teardown,
}

/// The speeds the standard lists for Scale.
pub const SCALES: &[f32] = &[0.25, 0.5, 1.0, 2.0, 4.0, 8.0];

/// Why a MANSRTSP body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("not a MANSRTSP/1.0 request line")]
    RequestLine,
    #[error("unknown MANSRTSP method {0:?}")]
    Method(String),
    #[error("missing or bad CSeq")]
    CSeq,
    #[error("bad Scale {0:?}")]
    Scale(String),
    #[error("bad Range {0:?} (npt=SECONDS-)")]
    Range(String),
}

/// A MANSRTSP request: the control and its CSeq.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    pub control: Control,
    pub cseq: u32,
}

impl Request {
    /// The body, as sent in INFO.
    pub fn build(&self) -> String {
        let method = match self.control {
            Control::Play { .. } => "PLAY",
            Control::Pause => "PAUSE",
            Control::Teardown => "TEARDOWN",
        };
        let mut b = format!("{method} MANSRTSP/1.0\r\nCSeq: {}\r\n", self.cseq);
        match self.control {
            Control::Play { scale, seek } => {
                if let Some(s) = scale {
                    b.push_str(&format!("Scale: {}\r\n", fmt_scale(s)));
                }
                match (scale, seek) {
                    (_, Some(t)) => b.push_str(&format!("Range: npt={t}-\r\n")),
                    // A plain PLAY resumes from where it paused.
                    (None, None) => b.push_str("Range: npt=now-\r\n"),
                    (Some(_), None) => {}
                }
            }
            Control::Pause => b.push_str("PauseTime: now\r\n"),
            Control::Teardown => {}
        }
        b.push_str("\r\n");
        b
    }

    /// Parses an INFO body.
    pub fn parse(body: &str) -> Result<Request, Error> {
        let mut lines = body.lines().map(str::trim).filter(|l| !l.is_empty());
        let first = lines.next().ok_or(Error::RequestLine)?;
        let mut words = first.split_whitespace();
        let (method, version) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        if !version.eq_ignore_ascii_case("MANSRTSP/1.0") {
            return Err(Error::RequestLine);
        }
        let (mut cseq, mut scale, mut seek) = (None, None, None);
        for l in lines {
            let Some((name, value)) = l.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "cseq" => cseq = value.parse::<u32>().ok(),
                "scale" => {
                    let s = value
                        .parse::<f32>()
                        .ok()
                        .filter(|s| s.is_finite() && *s > 0.0)
                        .ok_or_else(|| Error::Scale(value.to_string()))?;
                    scale = Some(s);
                }
                "range" => {
                    let t = value
                        .strip_prefix("npt=")
                        .map(|r| r.split('-').next().unwrap_or("").trim())
                        .and_then(|t| {
                            if t.is_empty() || t.eq_ignore_ascii_case("now") {
                                Some(None)
                            } else {
                                t.parse::<f64>()
                                    .ok()
                                    .filter(|x| *x >= 0.0)
                                    .map(|x| Some(x as u64))
                            }
                        })
                        .ok_or_else(|| Error::Range(value.to_string()))?;
                    seek = t;
                }
                _ => {}
            }
        }
        let control = match method.to_ascii_uppercase().as_str() {
            "PLAY" => Control::Play { scale, seek },
            "PAUSE" => Control::Pause,
            "TEARDOWN" => Control::Teardown,
            other => return Err(Error::Method(other.to_string())),
        };
        Ok(Request {
            control,
            cseq: cseq.ok_or(Error::CSeq)?,
        })
    }
}

/// A scale as devices expect it: `2.0`, `0.5`, `0.25`.
fn fmt_scale(s: f32) -> String {
    if s.fract() == 0.0 {
        format!("{s:.1}")
    } else {
        format!("{s}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_as_the_standard_writes_them() {
        let r = Request {
            control: Control::Play {
                scale: Some(2.0),
                seek: None,
            },
            cseq: 3,
        };
        assert_eq!(
            r.build(),
            "PLAY MANSRTSP/1.0\r\nCSeq: 3\r\nScale: 2.0\r\n\r\n"
        );
        let r = Request {
            control: Control::Play {
                scale: None,
                seek: Some(100),
            },
            cseq: 4,
        };
        assert_eq!(
            r.build(),
            "PLAY MANSRTSP/1.0\r\nCSeq: 4\r\nRange: npt=100-\r\n\r\n"
        );
        let r = Request {
            control: Control::Pause,
            cseq: 5,
        };
        assert_eq!(
            r.build(),
            "PAUSE MANSRTSP/1.0\r\nCSeq: 5\r\nPauseTime: now\r\n\r\n"
        );
        for s in SCALES {
            let r = Request {
                control: Control::Play {
                    scale: Some(*s),
                    seek: Some(7),
                },
                cseq: 1,
            };
            assert_eq!(Request::parse(&r.build()).unwrap(), r, "{s}");
        }
        assert_eq!(
            Request {
                control: Control::Play {
                    scale: Some(0.25),
                    seek: None
                },
                cseq: 2
            }
            .build(),
            "PLAY MANSRTSP/1.0\r\nCSeq: 2\r\nScale: 0.25\r\n\r\n"
        );
    }

    #[test]
    fn lenient_parsing_and_clear_errors() {
        let r = Request::parse("play MANSRTSP/1.0\ncseq:9\nrange: npt=now-\n").unwrap();
        assert_eq!(
            r,
            Request {
                control: Control::Play {
                    scale: None,
                    seek: None
                },
                cseq: 9
            }
        );
        assert_eq!(
            Request::parse("TEARDOWN MANSRTSP/1.0\r\nCSeq: 1\r\n\r\n")
                .unwrap()
                .control,
            Control::Teardown
        );
        for (body, e) in [
            ("", Error::RequestLine),
            ("PLAY RTSP/1.0\r\nCSeq: 1\r\n", Error::RequestLine),
            (
                "JUMP MANSRTSP/1.0\r\nCSeq: 1\r\n",
                Error::Method("JUMP".into()),
            ),
            ("PLAY MANSRTSP/1.0\r\n", Error::CSeq),
            (
                "PLAY MANSRTSP/1.0\r\nCSeq: 1\r\nScale: fast\r\n",
                Error::Scale("fast".into()),
            ),
            (
                "PLAY MANSRTSP/1.0\r\nCSeq: 1\r\nScale: -2\r\n",
                Error::Scale("-2".into()),
            ),
            (
                "PLAY MANSRTSP/1.0\r\nCSeq: 1\r\nRange: clock=x\r\n",
                Error::Range("clock=x".into()),
            ),
        ] {
            assert_eq!(Request::parse(body), Err(e), "{body:?}");
        }
    }
}
