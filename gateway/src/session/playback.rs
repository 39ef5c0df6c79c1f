//! Where a playback or download stands: its range, the speed and pause
//! the platform asked for (MANSRTSP), and the position the device should
//! be at, estimated from them and the time. The position says when a
//! playback should have ended: a device that goes on past the end of its
//! range without MediaStatus 121 is stopped (see `sip::playback`).

use std::time::Instant;

use serde::Serialize;

/// A playback's or download's state, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PlaybackView {
    /// "playback" or "download".
    pub mode: &'static str,
    /// The range asked for (Unix seconds).
    pub start: u64,
    pub end: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download_speed: Option<u32>,
    /// The speed last asked for (playback; 1 until a Scale is sent).
    pub scale: f32,
    pub paused: bool,
    /// Seconds into the range the device should be at.
    pub position_secs: f64,
    /// MANSRTSP controls the device accepted.
    pub controls: u32,
    /// When the position was last set (`position_secs` then), None
    /// before the media starts.
    #[serde(skip)]
    anchor: Option<Instant>,
    /// When the last control was accepted (media may pause around it).
    #[serde(skip)]
    pub last_control: Option<Instant>,
}

impl PlaybackView {
    pub fn new(download: bool, start: u64, end: u64, download_speed: Option<u32>) -> Self {
        PlaybackView {
            mode: if download { "download" } else { "playback" },
            start,
            end,
            download_speed,
            scale: 1.0,
            paused: false,
            position_secs: 0.0,
            controls: 0,
            anchor: None,
            last_control: None,
        }
    }

    /// A playback carried over a daemon restart: where it was at
    /// `saved_ms` (wall clock), moved on at its rate to now.
    #[allow(clippy::too_many_arguments)]
    pub fn carried(
        download: bool,
        start: u64,
        end: u64,
        download_speed: Option<u32>,
        scale: f32,
        paused: bool,
        position_secs: f64,
        controls: u32,
        away_secs: f64,
        now: Instant,
    ) -> Self {
        let mut p = PlaybackView::new(download, start, end, download_speed);
        p.scale = scale;
        p.paused = paused;
        p.controls = controls;
        p.position_secs = (position_secs + away_secs.max(0.0) * p.rate()).min(p.length());
        p.anchor = Some(now);
        p
    }

    /// Length of the range in seconds.
    pub fn length(&self) -> f64 {
        self.end.saturating_sub(self.start) as f64
    }

    /// How many range-seconds pass per second.
    fn rate(&self) -> f64 {
        if self.paused {
            0.0
        } else if self.mode == "download" {
            self.download_speed.unwrap_or(1).max(1) as f64
        } else {
            self.scale as f64
        }
    }

    /// The position at `now` (never past the end).
    pub fn position(&self, now: Instant) -> f64 {
        let moved = self
            .anchor
            .map_or(0.0, |a| now.duration_since(a).as_secs_f64() * self.rate());
        (self.position_secs + moved).min(self.length())
    }

    /// Settles the position at `now` (before a change of rate).
    fn settle(&mut self, now: Instant) {
        if self.anchor.is_some() {
            self.position_secs = self.position(now);
            self.anchor = Some(now);
        }
    }

    /// The media starts (the session is established).
    pub fn started(&mut self, now: Instant) {
        self.anchor = Some(now);
    }

    /// The device accepted a control.
    pub fn pause(&mut self, now: Instant) {
        self.settle(now);
        self.paused = true;
        self.accepted(now);
    }

    pub fn resume(&mut self, now: Instant) {
        self.settle(now);
        self.paused = false;
        self.accepted(now);
    }

    /// A PLAY with Scale (it also ends a pause, as every PLAY does).
    pub fn set_scale(&mut self, scale: f32, now: Instant) {
        self.settle(now);
        self.scale = scale;
        self.paused = false;
        self.accepted(now);
    }

    /// A PLAY with Range (it also ends a pause).
    pub fn seek(&mut self, secs: u64, now: Instant) {
        self.settle(now);
        self.position_secs = (secs as f64).min(self.length());
        self.paused = false;
        self.accepted(now);
    }

    fn accepted(&mut self, now: Instant) {
        self.controls += 1;
        self.last_control = Some(now);
    }

    /// Seconds the device has gone on past the end of the range at `now`
    /// (0 while within it). The position is capped at the end, so this
    /// is the time since the estimate reached it.
    pub fn overrun_secs(&self, now: Instant) -> f64 {
        let (Some(a), rate) = (self.anchor, self.rate()) else {
            return 0.0;
        };
        if rate == 0.0 {
            return 0.0;
        }
        let to_end = (self.length() - self.position_secs).max(0.0) / rate;
        (now.duration_since(a).as_secs_f64() - to_end).max(0.0)
    }

    /// A copy with the position at `now`.
    pub fn at(&self, now: Instant) -> Self {
        let mut v = self.clone();
        v.position_secs = (self.position(now) * 1000.0).round() / 1000.0;
        v
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn position_follows_scale_pause_and_seek() {
        let t0 = Instant::now();
        let s = |x: f64| t0 + Duration::from_secs_f64(x);
        let mut p = PlaybackView::new(false, 1000, 1060, None);
        assert_eq!(p.position(s(5.0)), 0.0, "not started");
        p.started(t0);
        assert_eq!(p.position(s(10.0)), 10.0);
        p.set_scale(2.0, s(10.0));
        assert_eq!(p.position(s(15.0)), 20.0);
        p.pause(s(15.0));
        assert!(p.paused);
        assert_eq!(p.position(s(100.0)), 20.0, "paused");
        assert_eq!(p.overrun_secs(s(1000.0)), 0.0, "a pause never overruns");
        p.seek(50, s(100.0));
        assert!(!p.paused, "a PLAY with Range plays");
        assert_eq!(p.position(s(102.0)), 54.0);
        p.pause(s(102.0));
        p.resume(s(102.0));
        assert_eq!(p.position(s(102.0)), 54.0);
        p.seek(50, s(100.0));
        // 10 s left at 2x: the end at 105 s; capped there.
        assert_eq!(p.position(s(200.0)), 60.0);
        assert_eq!(p.overrun_secs(s(104.0)), 0.0);
        assert!((p.overrun_secs(s(108.0)) - 3.0).abs() < 1e-9);
        assert_eq!(p.controls, 6);
        assert_eq!(p.at(s(101.0)).position_secs, 52.0);
        // A seek past the end is the end.
        p.seek(500, s(110.0));
        assert_eq!(p.position(s(110.0)), 60.0);
    }

    #[test]
    fn a_carried_playback_moved_on_while_away() {
        let now = Instant::now();
        let p = PlaybackView::carried(false, 0, 100, None, 2.0, false, 10.0, 3, 5.0, now);
        assert_eq!(p.position(now), 20.0);
        assert_eq!(p.position(now + Duration::from_secs(1)), 22.0);
        assert_eq!(p.controls, 3);
        let p = PlaybackView::carried(false, 0, 100, None, 1.0, true, 10.0, 1, 50.0, now);
        assert_eq!(p.position(now + Duration::from_secs(9)), 10.0, "paused");
        let p = PlaybackView::carried(true, 0, 100, Some(4), 1.0, false, 90.0, 0, 50.0, now);
        assert_eq!(p.position(now), 100.0, "capped at the end");
        assert!(p.overrun_secs(now + Duration::from_secs(3)) >= 3.0);
    }

    #[test]
    fn downloads_go_at_their_speed() {
        let t0 = Instant::now();
        let mut p = PlaybackView::new(true, 0, 100, Some(4));
        p.started(t0);
        assert_eq!(p.position(t0 + Duration::from_secs(10)), 40.0);
        assert!((p.overrun_secs(t0 + Duration::from_secs(30)) - 5.0).abs() < 1e-9);
        let v = serde_json::to_value(p.at(t0)).unwrap();
        assert_eq!(v["mode"], "download");
        assert_eq!(v["download_speed"], 4);
    }
}
