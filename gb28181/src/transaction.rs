//! RFC 3261 section 17 transactions as state machines with injected time.
//!
//! - Server side ([`ServerTransactions`]): a retransmitted request is
//!   absorbed; once answered, the last response is re-sent for each
//!   retransmission until Timer J (64*T1 over UDP, 0 over TCP) ends the
//!   transaction. (INVITE server transactions are kept the same way; the
//!   gateway only answers INVITEs it cannot serve.)
//! - Client side ([`ClientTransactions`]): non-INVITE requests are
//!   retransmitted over UDP on Timer E (T1 doubling up to T2, T2 once a
//!   provisional arrived) and time out on Timer F (64*T1); INVITEs on Timer A
//!   (T1 doubling) until any response, Timer B (64*T1) without one. A final
//!   non-2xx INVITE response is acknowledged and retransmissions of it are
//!   answered with the same ACK for Timer D (32 s).
//!
//! The caller feeds events and `now`, asks [`next_deadline`](ClientTransactions::next_deadline)
//! when to come back, and sends what [`poll`](ClientTransactions::poll) returns.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

pub const T1: Duration = Duration::from_millis(500);
pub const T2: Duration = Duration::from_secs(4);
/// Timer D (INVITE client, completed state, unreliable transport).
pub const TIMER_D: Duration = Duration::from_secs(32);

/// RFC 3261 17.2.3 key of a server transaction.
pub fn server_key(
    branch: Option<&str>,
    sent_by: &str,
    method: &str,
    call_id: &str,
    cseq: u32,
    from_tag: &str,
) -> String {
    let method = if method == "ACK" { "INVITE" } else { method };
    match branch {
        // Call-ID and CSeq too: a retransmission repeats them, and peers
        // exist that reuse a branch for later requests (sipp's
        // out-of-call scenarios do), which must not be taken for
        // retransmissions.
        Some(b) if b.starts_with("z9hG4bK") => {
            format!("{b}|{sent_by}|{method}|{call_id}|{cseq}")
        }
        // RFC 2543 peers: no unique branch.
        _ => format!("2543|{call_id}|{cseq}|{from_tag}|{sent_by}|{method}"),
    }
}

/// What to do with an incoming request.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// First copy: hand it to the application.
    New,
    /// Retransmission before we answered: drop it.
    Absorbed,
    /// Retransmission after we answered: send this again.
    Resend(Vec<u8>),
}

struct ServerTx {
    response: Option<Vec<u8>>,
    deadline: Instant,
}

/// Server transactions keyed by [`server_key`].
pub struct ServerTransactions {
    map: HashMap<String, ServerTx>,
    deadlines: BTreeSet<(Instant, String)>,
    /// Upper bound on live transactions (memory bound under a flood).
    pub max: usize,
}

/// How long a server transaction without a response is kept (the
/// application answers long before; this only bounds memory).
const PENDING_TTL: Duration = Duration::from_secs(64);

impl Default for ServerTransactions {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerTransactions {
    pub fn new() -> Self {
        ServerTransactions {
            map: HashMap::new(),
            deadlines: BTreeSet::new(),
            max: 500_000,
        }
    }

    fn set_deadline(&mut self, key: &str, at: Instant) {
        if let Some(tx) = self.map.get_mut(key) {
            self.deadlines.remove(&(tx.deadline, key.to_string()));
            tx.deadline = at;
            self.deadlines.insert((at, key.to_string()));
        }
    }

    /// A request arrived.
    pub fn on_request(&mut self, key: &str, now: Instant) -> Incoming {
        if let Some(tx) = self.map.get(key) {
            return match &tx.response {
                Some(r) => Incoming::Resend(r.clone()),
                None => Incoming::Absorbed,
            };
        }
        if self.map.len() >= self.max {
            self.expire(now);
        }
        let deadline = now + PENDING_TTL;
        self.map.insert(
            key.to_string(),
            ServerTx {
                response: None,
                deadline,
            },
        );
        self.deadlines.insert((deadline, key.to_string()));
        Incoming::New
    }

    /// We answered. Provisional responses keep the transaction pending
    /// their final one; a final response starts Timer J.
    pub fn on_response(
        &mut self,
        key: &str,
        response: &[u8],
        is_final: bool,
        reliable: bool,
        now: Instant,
    ) {
        let Some(tx) = self.map.get_mut(key) else {
            return;
        };
        tx.response = Some(response.to_vec());
        if is_final {
            if reliable {
                self.remove(key);
            } else {
                self.set_deadline(key, now + 64 * T1);
            }
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(tx) = self.map.remove(key) {
            self.deadlines.remove(&(tx.deadline, key.to_string()));
        }
    }

    /// Ends the transactions whose timer fired.
    pub fn expire(&mut self, now: Instant) {
        while let Some((at, key)) = self.deadlines.first().cloned() {
            if at > now && self.map.len() < self.max {
                break;
            }
            self.deadlines.pop_first();
            self.map.remove(&key);
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    Calling,
    Proceeding,
    /// INVITE answered with a non-2xx final: absorbing retransmissions.
    Completed,
}

struct ClientTx<D> {
    invite: bool,
    request: Vec<u8>,
    ack: Option<Vec<u8>>,
    dest: D,
    reliable: bool,
    state: ClientState,
    interval: Duration,
    next_retransmit: Option<Instant>,
    timeout: Instant,
}

impl<D> ClientTx<D> {
    fn deadline(&self) -> Instant {
        match self.next_retransmit {
            Some(r) if r < self.timeout => r,
            _ => self.timeout,
        }
    }
}

/// The matching of a response to a client transaction.
#[derive(Debug, PartialEq, Eq)]
pub enum Matched<D> {
    /// Pass it to the application; `is_final` ends the transaction (for a
    /// final non-2xx INVITE answer the caller must call [`ClientTransactions::set_ack`]).
    Deliver { is_final: bool },
    /// A retransmitted final response to an INVITE: send the ACK again.
    ResendAck(Vec<u8>, D),
    /// No transaction (late or stray): drop it.
    Stray,
}

/// What the timers ask for.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientEvent<D> {
    Retransmit(Vec<u8>, D),
    /// Timer B or F: no final response; the request failed (408).
    Timeout {
        branch: String,
        method: String,
    },
}

/// Client transactions keyed by branch (+ method).
pub struct ClientTransactions<D> {
    map: HashMap<String, ClientTx<D>>,
    deadlines: BTreeSet<(Instant, String)>,
}

impl<D: Clone> Default for ClientTransactions<D> {
    fn default() -> Self {
        Self::new()
    }
}

fn client_key(branch: &str, method: &str) -> String {
    let method = if method == "ACK" { "INVITE" } else { method };
    format!("{branch}|{method}")
}

impl<D: Clone> ClientTransactions<D> {
    pub fn new() -> Self {
        ClientTransactions {
            map: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    fn reschedule(&mut self, key: &str, old: Instant) {
        self.deadlines.remove(&(old, key.to_string()));
        if let Some(tx) = self.map.get(key) {
            self.deadlines.insert((tx.deadline(), key.to_string()));
        }
    }

    /// A request was sent for the first time.
    pub fn start(
        &mut self,
        branch: &str,
        method: &str,
        request: Vec<u8>,
        dest: D,
        reliable: bool,
        now: Instant,
    ) {
        let key = client_key(branch, method);
        if let Some(old) = self.map.remove(&key) {
            self.deadlines.remove(&(old.deadline(), key.clone()));
        }
        let tx = ClientTx {
            invite: method == "INVITE",
            request,
            ack: None,
            dest,
            reliable,
            state: ClientState::Calling,
            interval: T1,
            next_retransmit: (!reliable).then_some(now + T1),
            timeout: now + 64 * T1,
        };
        self.deadlines.insert((tx.deadline(), key.clone()));
        self.map.insert(key, tx);
    }

    /// A response arrived for (branch, CSeq method).
    pub fn on_response(
        &mut self,
        branch: &str,
        method: &str,
        status: u16,
        now: Instant,
    ) -> Matched<D> {
        let key = client_key(branch, method);
        let Some(tx) = self.map.get_mut(&key) else {
            return Matched::Stray;
        };
        let old = tx.deadline();
        if tx.state == ClientState::Completed {
            return match &tx.ack {
                Some(a) if status >= 300 => Matched::ResendAck(a.clone(), tx.dest.clone()),
                _ => Matched::Stray,
            };
        }
        if status < 200 {
            if tx.state == ClientState::Calling {
                tx.state = ClientState::Proceeding;
                if tx.invite {
                    // Timer A stops; Timer B no longer applies (RFC 3261
                    // 17.1.1.2): the application bounds the ringing time.
                    tx.next_retransmit = None;
                    tx.timeout = now + Duration::from_secs(3600);
                } else if !tx.reliable {
                    tx.interval = T2;
                    tx.next_retransmit = Some(now + T2);
                }
            }
            self.reschedule(&key, old);
            return Matched::Deliver { is_final: false };
        }
        if tx.invite && status >= 300 {
            tx.state = ClientState::Completed;
            tx.next_retransmit = None;
            tx.timeout = now + if tx.reliable { Duration::ZERO } else { TIMER_D };
            self.reschedule(&key, old);
        } else {
            self.map.remove(&key);
            self.deadlines.remove(&(old, key));
        }
        Matched::Deliver { is_final: true }
    }

    /// The ACK sent for a final non-2xx INVITE response.
    pub fn set_ack(&mut self, branch: &str, ack: Vec<u8>) {
        if let Some(tx) = self.map.get_mut(&client_key(branch, "INVITE")) {
            tx.ack = Some(ack);
        }
    }

    /// Gives up a transaction (the application cancelled it).
    pub fn forget(&mut self, branch: &str, method: &str) {
        let key = client_key(branch, method);
        if let Some(tx) = self.map.remove(&key) {
            self.deadlines.remove(&(tx.deadline(), key));
        }
    }

    /// Fires the timers due at `now`.
    pub fn poll(&mut self, now: Instant) -> Vec<ClientEvent<D>> {
        let mut out = Vec::new();
        while let Some((at, key)) = self.deadlines.first().cloned() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(tx) = self.map.get_mut(&key) else {
                continue;
            };
            if now >= tx.timeout {
                let completed = tx.state == ClientState::Completed;
                self.map.remove(&key);
                if !completed {
                    let (branch, method) = key.rsplit_once('|').unwrap_or((&key, ""));
                    out.push(ClientEvent::Timeout {
                        branch: branch.to_string(),
                        method: method.to_string(),
                    });
                }
                continue;
            }
            if let Some(r) = tx.next_retransmit {
                if r <= now {
                    out.push(ClientEvent::Retransmit(tx.request.clone(), tx.dest.clone()));
                    tx.interval = if tx.invite {
                        tx.interval * 2
                    } else {
                        (tx.interval * 2).min(T2)
                    };
                    tx.next_retransmit = Some(now + tx.interval);
                }
            }
            self.deadlines.insert((tx.deadline(), key));
        }
        out
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_absorbs_and_resends_until_timer_j() {
        let t0 = Instant::now();
        let mut s = ServerTransactions::new();
        let k = server_key(Some("z9hG4bK1"), "1.2.3.4:5060", "REGISTER", "c", 1, "t");
        assert_eq!(s.on_request(&k, t0), Incoming::New);
        assert_eq!(s.on_request(&k, t0), Incoming::Absorbed);
        s.on_response(&k, b"401", true, false, t0);
        assert_eq!(s.on_request(&k, t0 + T1), Incoming::Resend(b"401".to_vec()));
        s.expire(t0 + 64 * T1 - Duration::from_millis(1));
        assert_eq!(s.len(), 1);
        s.expire(t0 + 64 * T1);
        assert!(s.is_empty());
        assert_eq!(s.on_request(&k, t0 + 64 * T1), Incoming::New);
        // Over TCP the transaction ends with the final response.
        s.on_response(&k, b"200", true, true, t0);
        assert!(s.is_empty());
        // Different method or branch: a different transaction.
        let k2 = server_key(Some("z9hG4bK1"), "1.2.3.4:5060", "MESSAGE", "c", 1, "t");
        assert_eq!(s.on_request(&k2, t0), Incoming::New);
        // RFC 2543 keys use Call-ID and CSeq.
        let reused = server_key(Some("z9hG4bK1"), "1.2.3.4:5060", "REGISTER", "c2", 1, "t");
        assert_ne!(k, reused);
        let a = server_key(Some("old"), "h", "MESSAGE", "c", 1, "t");
        let b = server_key(None, "h", "MESSAGE", "c", 2, "t");
        assert_ne!(a, b);
    }

    #[test]
    fn server_table_is_bounded() {
        let t0 = Instant::now();
        let mut s = ServerTransactions::new();
        s.max = 10;
        for i in 0..100 {
            s.on_request(&format!("k{i}"), t0);
        }
        assert!(s.len() <= 10);
    }

    #[test]
    fn non_invite_timer_e_and_f() {
        let t0 = Instant::now();
        let mut c = ClientTransactions::<u8>::new();
        c.start("b1", "MESSAGE", b"req".to_vec(), 7, false, t0);
        let mut sent = vec![];
        #[allow(unused_assignments)]
        let mut t = t0;
        let mut timeout = None;
        while timeout.is_none() {
            t = c.next_deadline().unwrap();
            for e in c.poll(t) {
                match e {
                    ClientEvent::Retransmit(_, d) => {
                        assert_eq!(d, 7);
                        sent.push(t - t0)
                    }
                    ClientEvent::Timeout { branch, method } => {
                        assert_eq!(method, "MESSAGE");
                        timeout = Some(branch)
                    }
                }
            }
        }
        assert_eq!(timeout.as_deref(), Some("b1"));
        assert_eq!(t - t0, 64 * T1);
        let ms: Vec<u128> = sent.iter().map(|d| d.as_millis()).collect();
        // 0.5, 1.5, 3.5, 7.5, then every 4 s (T2) until 32 s.
        assert_eq!(
            ms,
            vec![500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
        );
        assert!(c.is_empty());
    }

    #[test]
    fn non_invite_response_stops_timers_and_strays_are_dropped() {
        let t0 = Instant::now();
        let mut c = ClientTransactions::<u8>::new();
        c.start("b1", "MESSAGE", b"req".to_vec(), 1, false, t0);
        assert_eq!(
            c.on_response("b1", "MESSAGE", 100, t0),
            Matched::Deliver { is_final: false }
        );
        // After a provisional, retransmit every T2.
        assert!(c.poll(t0 + T1).is_empty());
        assert_eq!(c.poll(t0 + T2).len(), 1);
        assert_eq!(
            c.on_response("b1", "MESSAGE", 200, t0),
            Matched::Deliver { is_final: true }
        );
        assert_eq!(c.on_response("b1", "MESSAGE", 200, t0), Matched::Stray);
        assert_eq!(c.on_response("b9", "MESSAGE", 200, t0), Matched::Stray);
        assert!(c.is_empty() && c.next_deadline().is_none());
        // Reliable transport: no retransmissions, still Timer F.
        c.start("b2", "MESSAGE", b"req".to_vec(), 1, true, t0);
        assert_eq!(c.next_deadline(), Some(t0 + 64 * T1));
    }

    #[test]
    fn invite_timer_a_b_and_ack_absorption() {
        let t0 = Instant::now();
        let mut c = ClientTransactions::<u8>::new();
        c.start("i1", "INVITE", b"inv".to_vec(), 1, false, t0);
        let mut n = 0;
        let mut t;
        loop {
            t = c.next_deadline().unwrap();
            let ev = c.poll(t);
            if ev.iter().any(|e| matches!(e, ClientEvent::Timeout { .. })) {
                break;
            }
            n += ev.len();
        }
        // Timer A: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s; Timer B at 32 s.
        assert_eq!(n, 6);
        assert_eq!(t - t0, 64 * T1);

        c.start("i2", "INVITE", b"inv".to_vec(), 1, false, t0);
        assert_eq!(
            c.on_response("i2", "INVITE", 100, t0),
            Matched::Deliver { is_final: false }
        );
        assert!(c.poll(t0 + Duration::from_secs(40)).is_empty());
        assert_eq!(
            c.on_response("i2", "INVITE", 486, t0),
            Matched::Deliver { is_final: true }
        );
        c.set_ack("i2", b"ack".to_vec());
        assert_eq!(
            c.on_response("i2", "INVITE", 486, t0),
            Matched::ResendAck(b"ack".to_vec(), 1)
        );
        assert!(c.poll(t0 + TIMER_D).is_empty());
        assert!(c.is_empty());
    }
}
