//! RecordInfo: what a camera or NVR recorded on its own storage between
//! two times. The query goes to the channel; the answer may come in many
//! MESSAGEs (same SN, `SumNum` in each), assembled here until `SumNum`
//! records are known. When parts stop coming, what arrived is returned as
//! partial after `query_timeout_secs` of silence; no part at all is a
//! time-out. Outcomes are counted in `gateway_record_queries_total{result}`.

use std::time::{Duration, Instant};

use gb28181::manscdp::{self, RecordInfo, RecordItem};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::core::{expired, Core, Purpose};
use crate::session::Error;

/// Record types the standard defines for `<Type>`.
pub const RECORD_TYPES: &[&str] = &["all", "time", "alarm", "manual"];

/// A RecordInfo query asked through the API.
#[derive(Debug, Clone)]
pub struct RecordQuery {
    pub device: String,
    /// The channel (the device itself when absent).
    pub channel: Option<String>,
    /// `YYYY-MM-DDTHH:MM:SS`.
    pub start: String,
    pub end: String,
    pub record_type: String,
}

/// `YYYY-MM-DDTHH:MM:SS` (the standard's time format, local time).
pub fn check_time(what: &str, t: &str) -> Result<(), String> {
    let b = t.as_bytes();
    let ok = b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{what} {t:?} is not YYYY-MM-DDTHH:MM:SS"))
    }
}

impl RecordQuery {
    /// Checks the times (format, start not after end) and the type.
    pub fn validate(&self) -> Result<(), String> {
        check_time("start", &self.start)?;
        check_time("end", &self.end)?;
        // The format sorts as text.
        if self.start > self.end {
            return Err(format!("start {} is after end {}", self.start, self.end));
        }
        if !RECORD_TYPES.contains(&self.record_type.as_str()) {
            return Err(format!(
                "type {:?} is not one of {}",
                self.record_type,
                RECORD_TYPES.join(", ")
            ));
        }
        Ok(())
    }
}

/// A RecordInfo answer being assembled, keyed by (target, SN).
pub(super) struct RecordAssembly {
    device: String,
    name: Option<String>,
    sum_num: Option<u32>,
    parts: u32,
    items: Vec<RecordItem>,
    reply: oneshot::Sender<Result<Value, Error>>,
    /// Silence after the last part (or the query) that ends the wait.
    deadline: Instant,
}

impl Core {
    fn count_records(&self, result: &str) {
        self.metrics
            .record_queries
            .with_label_values(&[result])
            .inc();
    }

    fn record_wait(&self) -> Duration {
        Duration::from_secs(self.cfg.query_timeout_secs)
    }

    pub(super) fn start_records(
        &mut self,
        q: Result<RecordQuery, String>,
        reply: oneshot::Sender<Result<Value, Error>>,
    ) {
        let q = match q.and_then(|q| q.validate().map(|()| q)) {
            Ok(q) => q,
            Err(why) => {
                self.count_records("invalid");
                let _ = reply.send(Err(Error::Invalid(why)));
                return;
            }
        };
        let target = match self.request_target(&q.device, q.channel.as_deref()) {
            Ok(t) => t,
            Err(e) => {
                self.count_records("unavailable");
                let _ = reply.send(Err(e));
                return;
            }
        };
        let sn = self.next_sn();
        let t = target.clone();
        let (start, end, ty) = (q.start.clone(), q.end.clone(), q.record_type.clone());
        let body = move |cs| manscdp::record_info_query(sn, &t, &start, &end, &ty, cs);
        let purpose = Purpose::Records {
            target: target.clone(),
            sn,
        };
        if let Err(e) = self.send_manscdp(&q.device, body, Some(purpose)) {
            self.count_records("unavailable");
            let _ = reply.send(Err(e));
            return;
        }
        info!(device = %q.device, %target, sn, start = %q.start, end = %q.end, "RecordInfo asked");
        let deadline = Instant::now() + self.record_wait();
        self.records.insert(
            (target, sn),
            RecordAssembly {
                device: q.device,
                name: None,
                sum_num: None,
                parts: 0,
                items: Vec::new(),
                reply,
                deadline,
            },
        );
    }

    fn finish_records(&mut self, key: &(String, u32), complete: bool) {
        let Some(mut a) = self.records.remove(key) else {
            return;
        };
        if a.parts == 0 {
            self.count_records("timeout");
            let _ = a.reply.send(Err(Error::Timeout(format!(
                "device {} sent no RecordInfo answer for {} (SN {})",
                a.device, key.0, key.1
            ))));
            return;
        }
        self.count_records(if complete { "complete" } else { "partial" });
        if !complete {
            warn!(device = %a.device, target = %key.0, sn = key.1, got = a.items.len(), sum_num = ?a.sum_num, "RecordInfo answer incomplete");
        }
        a.items.sort_by(|x, y| x.start_time.cmp(&y.start_time));
        let _ = a.reply.send(Ok(json!({
            "device": a.device,
            "channel": key.0,
            "name": a.name,
            "sn": key.1,
            "sum_num": a.sum_num,
            "count": a.items.len(),
            "complete": complete,
            "parts": a.parts,
            "items": a.items,
        })));
    }

    /// One part of a RecordInfo answer; false when no query waits for it.
    pub(super) fn on_record_part(&mut self, target: &str, sn: u32, r: RecordInfo) -> bool {
        let key = (target.to_string(), sn);
        let wait = self.record_wait();
        let Some(a) = self.records.get_mut(&key) else {
            debug!(%target, sn, "RecordInfo answer nobody waits for");
            self.count_records("stray");
            return false;
        };
        a.parts += 1;
        a.sum_num = Some(r.sum_num);
        if a.name.is_none() {
            a.name = r.name;
        }
        a.items.extend(r.items);
        a.deadline = Instant::now() + wait;
        if a.items.len() >= r.sum_num as usize {
            self.finish_records(&key, true);
        }
        true
    }

    /// The query's MESSAGE was refused (3xx-6xx) or not answered.
    pub(super) fn records_failed(&mut self, target: &str, sn: u32, why: String, timeout: bool) {
        let key = (target.to_string(), sn);
        if let Some(a) = self.records.remove(&key) {
            self.count_records(if timeout { "timeout" } else { "refused" });
            let e = if timeout {
                Error::Timeout(why)
            } else {
                Error::Upstream(why)
            };
            let _ = a.reply.send(Err(e));
        }
    }

    /// Answers whose parts stopped coming.
    pub(super) fn record_timers(&mut self, now: Instant) {
        for key in expired(&self.records, now, |a| a.deadline) {
            self.finish_records(&key, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_checked() {
        let q = |start: &str, end: &str, ty: &str| RecordQuery {
            device: "d".into(),
            channel: None,
            start: start.into(),
            end: end.into(),
            record_type: ty.into(),
        };
        assert!(q("2026-12-07T00:00:00", "2026-12-07T23:59:59", "all")
            .validate()
            .is_ok());
        for (s, e, t, why) in [
            (
                "2026-12-07 00:00:00",
                "2026-12-07T23:59:59",
                "all",
                "not YYYY-MM-DDTHH:MM:SS",
            ),
            ("2026-12-07T00:00", "2026-12-07T23:59:59", "all", "not YYYY"),
            (
                "2026-12-08T00:00:00",
                "2026-12-07T23:59:59",
                "all",
                "is after end",
            ),
            (
                "2026-12-07T00:00:00",
                "2026-12-07T23:59:59",
                "video",
                "not one of all, time",
            ),
        ] {
            let err = q(s, e, t).validate().unwrap_err();
            assert!(err.contains(why), "{s} {e} {t}: {err}");
        }
    }
}
