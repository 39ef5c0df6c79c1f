//! Counters of the control plane, in a prometheus registry owned by the
//! daemon: rendered on `/metrics` by the exporter and as JSON on
//! `/api/stats`. Updating one is an atomic add.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct SipMetrics {
    /// Requests received, by method.
    pub requests: IntCounterVec,
    /// Responses sent, by method and status class ("2xx").
    pub responses_sent: IntCounterVec,
    /// Responses received (to our requests), by method and class.
    pub responses_received: IntCounterVec,
    /// Messages that could not be parsed, by reason.
    pub parse_errors: IntCounterVec,
    /// MANSCDP bodies that could not be parsed, by reason.
    pub manscdp_errors: IntCounterVec,
    /// REGISTER outcomes: challenged, ok, unregistered, forbidden, stale,
    /// bad_request, wrong_domain, interval_too_brief.
    pub registrations: IntCounterVec,
    /// Authentication failures by reason.
    pub auth_failures: IntCounterVec,
    pub keepalives: IntCounter,
    /// Client transactions by method and outcome (final, timeout).
    pub transactions: IntCounterVec,
    /// Retransmissions we sent, and retransmitted requests absorbed.
    pub retransmissions: IntCounterVec,
    /// Messages dropped without an answer, by reason.
    pub dropped: IntCounterVec,
    /// Catalog syncs by outcome (complete, partial, failed).
    pub catalogs: IntCounterVec,
    /// Device online/offline transitions, by direction and reason.
    pub transitions: IntCounterVec,
    /// Live-view sessions by event (invited, established, failed, closed,
    /// ssrc_mismatch).
    pub sessions: IntCounterVec,
    /// Sessions a restarted daemon found saved, by what became of them
    /// (restored, ended with a BYE, unreadable).
    pub session_restores: IntCounterVec,
    /// Unusable SDP answers by reason.
    pub sdp_errors: IntCounterVec,
    pub devices: IntGauge,
    pub devices_online: IntGauge,
    pub tcp_connections: IntGauge,
    /// Cascade: 1 while registered with the superior platform.
    pub cascade_registered: IntGaugeVec,
    /// Cascade: REGISTER outcomes upward, by platform and result (ok,
    /// challenged, refused, timeout, redirected, unregistered).
    pub cascade_registrations: IntCounterVec,
    /// Cascade: keepalives upward by platform and result (ok, failed).
    pub cascade_keepalives: IntCounterVec,
    /// Cascade: requests from superiors by platform and kind (catalog,
    /// device_info, device_status, refused, ...).
    pub cascade_requests: IntCounterVec,
    /// Cascade: catalog items sent to superiors, and MESSAGE parts resent
    /// or unanswered.
    pub cascade_catalog: IntCounterVec,
    /// DeviceControl asked through the API, by command and result (ok,
    /// error, refused, timeout, invalid, unavailable).
    pub controls: IntCounterVec,
    /// RecordInfo queries asked through the API, by result (complete,
    /// partial, timeout, refused, invalid, unavailable, stray).
    pub record_queries: IntCounterVec,
    /// Alarms devices raised, by device, priority and method.
    pub alarms: IntCounterVec,
    /// MANSRTSP playback controls asked through the API, by action and
    /// result (ok, refused, timeout, invalid, unavailable).
    pub playback_controls: IntCounterVec,
    /// Playbacks and downloads that ended by themselves, by mode and
    /// reason (end_of_file: MediaStatus 121; overran: BYE past the range).
    pub playback_ends: IntCounterVec,
    /// Subscriptions to devices by event and result (ok, refreshed,
    /// refused, timeout, expired, terminated, unsubscribed).
    pub subscriptions: IntCounterVec,
    /// Active subscriptions by event.
    pub subscriptions_active: IntGaugeVec,
    /// NOTIFYs from devices by event and whether they came in one of our
    /// subscriptions (subscribed) or not (unsolicited).
    pub notifies: IntCounterVec,
    /// MobilePosition reports received (NOTIFY or MESSAGE).
    pub mobile_positions: IntCounter,
}

fn vec(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("static metric definition {name}: {e}"));
    // Registering can only fail on a duplicate name, which would be a bug
    // here; the counter still works unregistered.
    let _ = reg.register(Box::new(v.clone()));
    v
}

impl SipMetrics {
    pub fn new(reg: &Registry) -> Self {
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help)
                .unwrap_or_else(|e| unreachable!("static metric definition {name}: {e}"));
            let _ = reg.register(Box::new(c.clone()));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help)
                .unwrap_or_else(|e| unreachable!("static metric definition {name}: {e}"));
            let _ = reg.register(Box::new(g.clone()));
            g
        };
        let m = SipMetrics {
            requests: vec(
                reg,
                "gateway_sip_requests_total",
                "SIP requests received",
                &["method"],
            ),
            responses_sent: vec(
                reg,
                "gateway_sip_responses_sent_total",
                "SIP responses sent",
                &["method", "class"],
            ),
            responses_received: vec(
                reg,
                "gateway_sip_responses_received_total",
                "SIP responses received",
                &["method", "class"],
            ),
            parse_errors: vec(
                reg,
                "gateway_sip_parse_errors_total",
                "SIP messages that could not be parsed",
                &["reason"],
            ),
            manscdp_errors: vec(
                reg,
                "gateway_manscdp_errors_total",
                "MANSCDP bodies that could not be parsed",
                &["reason"],
            ),
            registrations: vec(
                reg,
                "gateway_sip_registrations_total",
                "REGISTER requests by outcome",
                &["result"],
            ),
            auth_failures: vec(
                reg,
                "gateway_sip_auth_failures_total",
                "Digest authentication failures",
                &["reason"],
            ),
            keepalives: counter("gateway_sip_keepalives_total", "Keepalives received"),
            transactions: vec(
                reg,
                "gateway_sip_client_transactions_total",
                "Requests the gateway sent, by outcome",
                &["method", "outcome"],
            ),
            retransmissions: vec(
                reg,
                "gateway_sip_retransmissions_total",
                "Retransmissions sent and absorbed",
                &["direction"],
            ),
            dropped: vec(
                reg,
                "gateway_sip_dropped_total",
                "SIP messages dropped without an answer",
                &["reason"],
            ),
            catalogs: vec(
                reg,
                "gateway_catalog_syncs_total",
                "Catalog synchronisations by outcome",
                &["outcome"],
            ),
            transitions: vec(
                reg,
                "gateway_device_transitions_total",
                "Device online/offline transitions",
                &["to", "reason"],
            ),
            sessions: vec(
                reg,
                "gateway_sip_sessions_total",
                "Live-view sessions by event",
                &["event"],
            ),
            session_restores: vec(
                reg,
                "gateway_session_restores_total",
                "Sessions of a previous daemon taken back at start, by result (restored, ended, unreadable)",
                &["result"],
            ),
            sdp_errors: vec(
                reg,
                "gateway_sdp_errors_total",
                "Unusable SDP answers",
                &["reason"],
            ),
            devices: gauge("gateway_devices", "Devices in the registry"),
            devices_online: gauge("gateway_devices_online", "Devices online"),
            tcp_connections: gauge("gateway_sip_tcp_connections", "Open SIP TCP connections"),
            subscriptions_active: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "gateway_subscriptions_active",
                        "Active subscriptions to devices, by event",
                    ),
                    &["event"],
                )
                .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
                let _ = reg.register(Box::new(g.clone()));
                g
            },
            subscriptions: vec(
                reg,
                "gateway_subscriptions_total",
                "Subscriptions to devices (SUBSCRIBE), by event and result",
                &["event", "result"],
            ),
            notifies: vec(
                reg,
                "gateway_notifies_total",
                "NOTIFYs from devices, by event and whether in one of our subscriptions",
                &["event", "result"],
            ),
            mobile_positions: counter(
                "gateway_mobile_positions_total",
                "MobilePosition reports from devices",
            ),
            cascade_registered: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "gateway_cascade_registered",
                        "1 while registered with the superior platform",
                    ),
                    &["platform"],
                )
                .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
                let _ = reg.register(Box::new(g.clone()));
                g
            },
            cascade_registrations: vec(
                reg,
                "gateway_cascade_registrations_total",
                "REGISTER outcomes towards superior platforms",
                &["platform", "result"],
            ),
            cascade_keepalives: vec(
                reg,
                "gateway_cascade_keepalives_total",
                "Keepalives towards superior platforms by result",
                &["platform", "result"],
            ),
            cascade_requests: vec(
                reg,
                "gateway_cascade_requests_total",
                "Requests from superior platforms by kind",
                &["platform", "kind"],
            ),
            controls: vec(
                reg,
                "gateway_device_controls_total",
                "DeviceControl commands asked through the API, by command and result",
                &["command", "result"],
            ),
            alarms: vec(
                reg,
                "gateway_alarms_total",
                "Alarms devices raised (MANSCDP Notify Alarm), by device, priority and method",
                &["device", "priority", "method"],
            ),
            record_queries: vec(
                reg,
                "gateway_record_queries_total",
                "RecordInfo queries asked through the API, by result",
                &["result"],
            ),
            playback_controls: vec(
                reg,
                "gateway_playback_controls_total",
                "MANSRTSP playback controls asked through the API, by action and result",
                &["action", "result"],
            ),
            playback_ends: vec(
                reg,
                "gateway_playback_ends_total",
                "Playbacks and downloads that ended by themselves, by mode and reason",
                &["mode", "reason"],
            ),
            cascade_catalog: vec(
                reg,
                "gateway_cascade_catalog_total",
                "Catalog items and parts sent to superior platforms",
                &["platform", "what"],
            ),
        };
        // Known outcomes exist from the start at 0, so a rate() sees their
        // first increase (a series born at its first event would not).
        for r in [
            "challenged",
            "ok",
            "unregistered",
            "forbidden",
            "stale",
            "bad_request",
            "wrong_domain",
            "interval_too_brief",
        ] {
            m.registrations.with_label_values(&[r]);
        }
        for r in [
            "malformed",
            "username",
            "unknown_device",
            "stale_nonce",
            "realm",
            "password",
        ] {
            m.auth_failures.with_label_values(&[r]);
        }
        for e in [
            "invited",
            "established",
            "failed",
            "closed",
            "ssrc_mismatch",
        ] {
            m.sessions.with_label_values(&[e]);
        }
        for r in ["restored", "ended", "unreadable"] {
            m.session_restores.with_label_values(&[r]);
        }
        m
    }
}

/// Status class label ("1xx".."6xx").
pub fn class(code: u16) -> &'static str {
    match code / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "6xx",
    }
}

/// All counters of a registry as JSON `{name: {"label=value,...": n}}`.
pub fn to_json(reg: &Registry) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for fam in reg.gather() {
        let mut m = serde_json::Map::new();
        for metric in fam.get_metric() {
            let key = metric
                .get_label()
                .iter()
                .map(|l| format!("{}={}", l.name(), l.value()))
                .collect::<Vec<_>>()
                .join(",");
            let v = match fam.get_field_type() {
                prometheus::proto::MetricType::COUNTER => metric.get_counter().get_value(),
                prometheus::proto::MetricType::GAUGE => metric.get_gauge().get_value(),
                _ => continue,
            };
            m.insert(key, serde_json::json!(v as u64));
        }
        out.insert(fam.name().to_string(), serde_json::Value::Object(m));
    }
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_in_json() {
        let reg = Registry::new();
        let m = SipMetrics::new(&reg);
        m.requests.with_label_values(&["REGISTER"]).inc_by(3);
        m.keepalives.inc();
        m.devices.set(2);
        let j = to_json(&reg);
        assert_eq!(j["gateway_sip_requests_total"]["method=REGISTER"], 3);
        assert_eq!(j["gateway_sip_keepalives_total"][""], 1);
        assert_eq!(j["gateway_devices"][""], 2);
        assert_eq!(class(404), "4xx");
    }
}
