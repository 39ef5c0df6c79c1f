//! BPF_PROG_TEST_RUN of the XDP program (root only): crafted frames in,
//! verdicts and exact counter values in the maps out.

use aya::programs::{TestRun, TestRunOptions, Xdp};
use gateway::dataplane::{
    attach::{self, Settings},
    flows::FlowSpec,
    Maps, StreamSummary,
};
use gateway_common::{counter, Config, FlowKey, FlowValue};
use gateway_tests::{
    frames::{arp, Frame, Rtp},
    require_root,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const GW: &str = "198.18.0.1";
const GW6: &str = "2001:db8::1";

struct Harness {
    ebpf: aya::Ebpf,
    maps: Maps,
}

impl Harness {
    fn new(unknown_drop: bool) -> Self {
        // BPF_PROG_TEST_RUN runs on the calling thread's CPU: one CPU, so
        // every run lands in the same per-CPU slot and the sequence
        // accounting sees the packets in order (as one flow on one RX
        // queue does). libtest runs each test on a thread of its own.
        gateway::sys::pin_thread_to_cpu(0).expect("pin the test thread");
        let (mut ebpf, mut maps) = attach::load(64, None).expect("load object");
        let prog: &mut Xdp = ebpf.program_mut("gateway_xdp").unwrap().try_into().unwrap();
        prog.load().expect("verifier accepts the XDP program");
        let mut cfg = Config::default();
        Settings {
            media_ports: (30000, 30999),
            unknown_drop,
            dscp: None,
            egress_ports: (30000, 30999),
        }
        .apply(&mut cfg);
        maps.set_config(&cfg).unwrap();
        Harness { ebpf, maps }
    }

    fn flow(
        &mut self,
        local: &str,
        ssrc: Option<u32>,
        expect: Option<u32>,
    ) -> (FlowKey, FlowValue) {
        self.maps
            .add_flow(&FlowSpec {
                local: Some(local.parse().unwrap()),
                ssrc,
                expect_ssrc: expect,
                name: "t".into(),
                clock_rate: 90_000,
            })
            .unwrap()
    }

    fn run(&mut self, frame: &[u8]) -> u32 {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut("gateway_xdp")
            .unwrap()
            .try_into()
            .unwrap();
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        r.return_value
    }

    fn counters(&mut self) -> [u64; counter::COUNT as usize] {
        self.maps.counters().unwrap()
    }

    fn stream(&mut self, slot: u32) -> StreamSummary {
        self.maps.stream_summary(slot)
    }
}

/// The counters a fixture must change: (index, delta); every other counter
/// must stay as it was.
fn check(h: &mut Harness, name: &str, frame: &[u8], verdict: u32, deltas: &[(u32, u64)]) {
    let before = h.counters();
    let got = h.run(frame);
    assert_eq!(got, verdict, "{name}: verdict");
    let after = h.counters();
    let mut want = before;
    for (i, d) in deltas {
        want[*i as usize] += d;
    }
    let v = if verdict == XDP_DROP {
        counter::VERDICT_DROP
    } else {
        counter::VERDICT_PASS
    };
    want[v as usize] += 1;
    for i in 0..counter::COUNT as usize {
        assert_eq!(
            after[i],
            want[i],
            "{name}: counter {} ({} -> {})",
            counter::NAMES[i],
            before[i],
            after[i]
        );
    }
}

#[test]
fn classification_fixtures() {
    if !require_root("classification_fixtures") {
        return;
    }
    let mut h = Harness::new(false);
    let (_, v4) = h.flow("198.18.0.1:30000", None, None);
    let (_, v6) = h.flow("[2001:db8::1]:30000", None, None);
    let rtp = |seq| Rtp::new(seq, 0x1111);
    let plen = |r: &Rtp| r.bytes().len() as u64;
    let m = |r: &Rtp| vec![(counter::MATCHED, 1), (counter::MATCHED_BYTES, plen(r))];

    let r = rtp(1);
    check(
        &mut h,
        "ipv4 rtp",
        &Frame::rtp(GW, 30000, &r).bytes(),
        XDP_PASS,
        &m(&r),
    );
    let r = rtp(2);
    let mut f = Frame::rtp(GW, 30000, &r);
    f.ip_options = 8;
    check(&mut h, "ipv4 options", &f.bytes(), XDP_PASS, &m(&r));
    let mut f = Frame::rtp(GW, 30000, &rtp(3));
    f.vlans = vec![0x8100];
    check(&mut h, "vlan", &f.bytes(), XDP_PASS, &m(&rtp(3)));
    let mut f = Frame::rtp(GW, 30000, &rtp(4));
    f.vlans = vec![0x88a8, 0x8100];
    check(&mut h, "double vlan", &f.bytes(), XDP_PASS, &m(&rtp(4)));
    // Three tags: the third is read as the ethertype (0x8100): not IP.
    let mut f = Frame::rtp(GW, 30000, &rtp(4));
    f.vlans = vec![0x88a8, 0x8100, 0x8100];
    check(
        &mut h,
        "triple vlan",
        &f.bytes(),
        XDP_PASS,
        &[(counter::NOT_IP, 1)],
    );
    let r = Rtp { csrcs: 3, ..rtp(5) };
    check(
        &mut h,
        "csrc list",
        &Frame::rtp(GW, 30000, &r).bytes(),
        XDP_PASS,
        &m(&r),
    );
    let r = Rtp {
        ext_words: Some(2),
        ..rtp(6)
    };
    check(
        &mut h,
        "extension",
        &Frame::rtp(GW, 30000, &r).bytes(),
        XDP_PASS,
        &m(&r),
    );
    let r = Rtp {
        padding: 4,
        csrcs: 1,
        ext_words: Some(1),
        ..rtp(7)
    };
    check(
        &mut h,
        "padding",
        &Frame::rtp(GW, 30000, &r).bytes(),
        XDP_PASS,
        &m(&r),
    );

    let r = rtp(1);
    check(
        &mut h,
        "ipv6 rtp",
        &Frame::rtp(GW6, 30000, &r).bytes(),
        XDP_PASS,
        &m(&r),
    );
    let mut f = Frame::rtp(GW6, 30000, &rtp(2));
    f.v6_ext = true;
    f.vlans = vec![0x8100];
    check(
        &mut h,
        "ipv6 ext headers + vlan",
        &f.bytes(),
        XDP_PASS,
        &m(&rtp(2)),
    );

    // Not RTP on a flow port: counted globally and on the stream.
    let r = Rtp {
        version: 1,
        ..rtp(8)
    };
    check(
        &mut h,
        "rtp version 1",
        &Frame::rtp(GW, 30000, &r).bytes(),
        XDP_PASS,
        &[(counter::NOT_RTP, 1)],
    );
    let mut bad = Rtp {
        payload: 20,
        ..rtp(9)
    }
    .bytes();
    bad[0] |= 0x0f; // 15 CSRCs (60 bytes) announced in a 32-byte packet
    check(
        &mut h,
        "csrc overrun",
        &Frame::udp(GW, 30000, bad).bytes(),
        XDP_PASS,
        &[(counter::NOT_RTP, 1)],
    );
    let mut bad = Rtp {
        padding: 2,
        ..rtp(9)
    }
    .bytes();
    *bad.last_mut().unwrap() = 250; // padding longer than the payload
    check(
        &mut h,
        "bad padding",
        &Frame::udp(GW, 30000, bad).bytes(),
        XDP_PASS,
        &[(counter::NOT_RTP, 1)],
    );
    let mut bad = Rtp {
        ext_words: Some(1),
        ..rtp(9)
    }
    .bytes();
    bad[14..16].copy_from_slice(&200u16.to_be_bytes()); // extension past the end
    check(
        &mut h,
        "extension overrun",
        &Frame::udp(GW, 30000, bad).bytes(),
        XDP_PASS,
        &[(counter::NOT_RTP, 1)],
    );
    check(
        &mut h,
        "short udp payload",
        &Frame::udp(GW, 30000, vec![0x80; 11]).bytes(),
        XDP_PASS,
        &[(counter::NOT_RTP, 1)],
    );
    assert_eq!(h.stream(v4.slot).not_rtp, 5);

    // Headers that do not add up.
    let mut f = Frame::rtp(GW, 30000, &rtp(10));
    f.udp_len = Some(7);
    check(
        &mut h,
        "udp length < 8",
        &f.bytes(),
        XDP_PASS,
        &[(counter::MALFORMED, 1)],
    );
    let mut f = Frame::rtp(GW, 30000, &rtp(10));
    f.udp_len = Some(1000);
    check(
        &mut h,
        "udp length > ip payload",
        &f.bytes(),
        XDP_PASS,
        &[(counter::MALFORMED, 1)],
    );

    // Fragments: non-first ones are not parsed as UDP; a first fragment is.
    let mut f = Frame::rtp(GW, 30000, &rtp(11));
    f.frag_offset = 100;
    check(
        &mut h,
        "ipv4 non-first fragment",
        &f.bytes(),
        XDP_PASS,
        &[(counter::FRAGMENT, 1)],
    );
    let mut f = Frame::rtp(GW6, 30000, &rtp(11));
    f.frag_offset = 100;
    check(
        &mut h,
        "ipv6 non-first fragment",
        &f.bytes(),
        XDP_PASS,
        &[(counter::FRAGMENT, 1)],
    );
    let r = rtp(12);
    let mut f = Frame::rtp(GW, 30000, &r);
    f.more_fragments = true;
    f.udp_len = Some(3000); // the datagram continues in later fragments
    check(&mut h, "ipv4 first fragment", &f.bytes(), XDP_PASS, &m(&r));

    // Everything else passes untouched.
    check(&mut h, "arp", &arp(), XDP_PASS, &[(counter::NOT_IP, 1)]);
    let mut f = Frame::rtp(GW, 30000, &rtp(13));
    f.proto = 6;
    check(
        &mut h,
        "tcp",
        &f.bytes(),
        XDP_PASS,
        &[(counter::NOT_UDP, 1)],
    );
    check(
        &mut h,
        "udp elsewhere",
        &Frame::rtp(GW, 5060, &rtp(13)).bytes(),
        XDP_PASS,
        &[(counter::UDP_OTHER, 1)],
    );
    // RTCP on the port after a flow's port.
    let mut rtcp = vec![0x80, 200, 0, 6];
    rtcp.extend_from_slice(&[0; 24]);
    check(
        &mut h,
        "rtcp",
        &Frame::udp(GW, 30001, rtcp).bytes(),
        XDP_PASS,
        &[(counter::RTCP, 1)],
    );
    // Unknown flow in the media range under the pass policy.
    check(
        &mut h,
        "unknown passed",
        &Frame::rtp(GW, 30100, &rtp(1)).bytes(),
        XDP_PASS,
        &[(counter::UNKNOWN_PASSED, 1)],
    );

    let s4 = h.stream(v4.slot);
    // Sequence numbers 1-7 and 12 were matched: 8 packets, 8-11 lost.
    assert_eq!(s4.packets, 8, "v4 stream packets");
    assert_eq!((s4.expected, s4.lost), (12, 4));
    let s6 = h.stream(v6.slot);
    assert_eq!((s6.packets, s6.lost), (2, 0));
}

#[test]
fn unknown_flows_dropped_under_drop_policy() {
    if !require_root("unknown_flows_dropped_under_drop_policy") {
        return;
    }
    let mut h = Harness::new(true);
    h.flow("198.18.0.1:30000", Some(7), None);
    let f = Frame::rtp(GW, 30500, &Rtp::new(1, 7)).bytes();
    check(
        &mut h,
        "unknown in range",
        &f,
        XDP_DROP,
        &[(counter::UNKNOWN_DROPPED, 1)],
    );
    // Same port as a flow, other SSRC: unknown too.
    let f = Frame::rtp(GW, 30000, &Rtp::new(1, 8)).bytes();
    check(
        &mut h,
        "unknown ssrc on flow port",
        &f,
        XDP_DROP,
        &[(counter::UNKNOWN_DROPPED, 1)],
    );
    // Garbage to the media range is dropped as well (counted as not RTP).
    let f = Frame::udp(GW, 30500, b"garbage".to_vec()).bytes();
    check(
        &mut h,
        "garbage in range",
        &f,
        XDP_DROP,
        &[(counter::NOT_RTP, 1)],
    );
    // Outside the range the policy does not apply.
    let f = Frame::rtp(GW, 40000, &Rtp::new(1, 7)).bytes();
    check(
        &mut h,
        "outside range",
        &f,
        XDP_PASS,
        &[(counter::UDP_OTHER, 1)],
    );
    let f = Frame::rtp(GW, 30000, &Rtp::new(1, 7)).bytes();
    check(
        &mut h,
        "known",
        &f,
        XDP_PASS,
        &[(counter::MATCHED, 1), (counter::MATCHED_BYTES, 112)],
    );
}

#[test]
fn truncation_at_every_length() {
    if !require_root("truncation_at_every_length") {
        return;
    }
    let mut h = Harness::new(true);
    let (_, v) = h.flow("198.18.0.1:30000", None, None);
    let full = Frame::rtp(
        GW,
        30000,
        &Rtp {
            csrcs: 1,
            ext_words: Some(1),
            padding: 4,
            ..Rtp::new(1, 5)
        },
    )
    .bytes();
    // BPF_PROG_TEST_RUN refuses XDP input shorter than an Ethernet header.
    for len in 14..full.len() {
        check(
            &mut h,
            &format!("truncated to {len}"),
            &full[..len],
            XDP_PASS,
            &[(counter::MALFORMED, 1)],
        );
    }
    assert_eq!(h.stream(v.slot).packets, 0);
    check(
        &mut h,
        "full",
        &full,
        XDP_PASS,
        &[
            (counter::MATCHED, 1),
            (counter::MATCHED_BYTES, full.len() as u64 - 42),
        ],
    );
    assert_eq!(h.stream(v.slot).packets, 1);
}

#[test]
fn sequence_accounting() {
    if !require_root("sequence_accounting") {
        return;
    }
    let mut h = Harness::new(false);
    let (_, v) = h.flow("198.18.0.1:30000", None, None);
    // Across the wrap, with 2 lost, 1 reordered, 2 duplicates, markers every 5th.
    let mut seqs: Vec<u16> = (65530..=65535).collect();
    seqs.extend([0, 1, 3, 2, 2, 4, 7, 8, 8, 9]);
    for &q in &seqs {
        let r = Rtp {
            marker: q % 5 == 4,
            ..Rtp::new(q, 0xabc)
        };
        assert_eq!(h.run(&Frame::rtp(GW, 30000, &r).bytes()), XDP_PASS);
    }
    let s = h.stream(v.slot);
    assert_eq!(s.packets, seqs.len() as u64);
    assert_eq!(s.highest_seq, 65536 + 9);
    assert_eq!(s.expected, 16);
    assert_eq!(s.lost, 2, "5 and 6 missing");
    assert_eq!(s.out_of_order, 1);
    assert_eq!(s.duplicates, 2);
    assert_eq!(s.frames, 3, "65534, 4 and 9 carry the marker");
    assert_eq!(s.ssrc, 0xabc);
    assert_eq!(s.last_pt, 96);
    assert!(s.first_ns > 0 && s.last_ns >= s.first_ns);
}

#[test]
fn ssrc_split_and_mismatch() {
    if !require_root("ssrc_split_and_mismatch") {
        return;
    }
    let mut h = Harness::new(false);
    // Two streams on one port split by SSRC, one port-level flow expecting an SSRC.
    let (_, a) = h.flow("198.18.0.1:30010", Some(100), None);
    let (_, b) = h.flow("198.18.0.1:30010", Some(200), None);
    let (_, c) = h.flow("0.0.0.0:30020", None, Some(300));
    for q in 0..5 {
        h.run(&Frame::rtp(GW, 30010, &Rtp::new(q, 100)).bytes());
        h.run(&Frame::rtp(GW, 30010, &Rtp::new(q + 1000, 200)).bytes());
        h.run(&Frame::rtp(GW, 30020, &Rtp::new(q, 300)).bytes());
    }
    for q in 0..3 {
        // A device that ignores the y= SSRC: tolerated by port, counted.
        h.run(&Frame::rtp("198.18.0.9", 30020, &Rtp::new(q, 999)).bytes());
    }
    let (sa, sb, sc) = (h.stream(a.slot), h.stream(b.slot), h.stream(c.slot));
    assert_eq!((sa.packets, sa.ssrc, sa.lost), (5, 100, 0));
    assert_eq!((sb.packets, sb.ssrc, sb.highest_seq), (5, 200, 1004));
    assert_eq!(
        (sc.packets, sc.ssrc_mismatch, sc.received, sc.lost),
        (8, 3, 5, 0)
    );

    // The port-level any-address flow is found through the arrays
    // (PORT_ANY_FLOW, FLOW_SLOTS): once deleted, and its slot given to a
    // flow on another port, its port's packets match nothing.
    let key = gateway::dataplane::make_key("0.0.0.0:30020".parse().unwrap(), None);
    h.maps.del_flow(&key).unwrap();
    let (_, d) = h.flow("0.0.0.0:30030", None, Some(300));
    assert_eq!(d.slot, c.slot, "the slot is reused");
    let before = h.counters();
    h.run(&Frame::rtp(GW, 30020, &Rtp::new(9, 300)).bytes());
    let after = h.counters();
    assert_eq!(
        after[counter::UNKNOWN_PASSED as usize],
        before[counter::UNKNOWN_PASSED as usize] + 1,
        "the deleted flow's port is unknown"
    );
    h.run(&Frame::rtp(GW, 30030, &Rtp::new(9, 300)).bytes());
    assert_eq!(
        h.stream(d.slot).packets,
        1,
        "the new flow counts its own port"
    );
}

/// The SIP flood guard's verdicts: a source gets its burst, then is held
/// to its rate; the unknown sources together to the global rate; an
/// allowed (registered) address always passes; other ports, media and a
/// switched-off guard are untouched.
#[test]
fn sip_flood_guard_verdicts() {
    if !require_root("sip_flood_guard_verdicts") {
        return;
    }
    use gateway::dataplane::sip_guard::GuardSettings;
    let mut h = Harness::new(true);
    // 1 packet/s per source with a burst of 3; 1 packet/s in all with a
    // burst of 5 (one CPU here): far slower than this test runs.
    let mut g = GuardSettings {
        rate: 1,
        burst: 3,
        global_rate: 1,
    }
    .to_kernel(&[5060], 1)
    .unwrap();
    g.global_tolerance_ns = 4 * g.global_interval_ns;
    h.maps.set_sip_guard(&g).unwrap();
    let register = b"REGISTER sip:x SIP/2.0\r\n\r\n".to_vec();
    let from = |src: &str| {
        let mut f = Frame::udp(GW, 5060, register.clone());
        f.src = src.parse().unwrap();
        f.bytes()
    };
    for i in 0..3 {
        check(
            &mut h,
            &format!("burst {i}"),
            &from("198.18.0.2"),
            XDP_PASS,
            &[(counter::SIP_PASSED, 1)],
        );
    }
    check(
        &mut h,
        "over its rate",
        &from("198.18.0.2"),
        XDP_DROP,
        &[(counter::SIP_DROPPED_SOURCE, 1)],
    );
    // Two more sources fit the global burst of 5; the next does not.
    for src in ["198.18.0.3", "198.18.0.4"] {
        check(
            &mut h,
            src,
            &from(src),
            XDP_PASS,
            &[(counter::SIP_PASSED, 1)],
        );
    }
    check(
        &mut h,
        "over the global rate",
        &from("198.18.0.5"),
        XDP_DROP,
        &[(counter::SIP_DROPPED_GLOBAL, 1)],
    );
    // A registered device's address passes whatever the budgets say.
    h.maps
        .sip_allow("198.18.0.2".parse().unwrap(), true)
        .unwrap();
    for i in 0..10 {
        check(
            &mut h,
            &format!("allowed {i}"),
            &from("198.18.0.2"),
            XDP_PASS,
            &[(counter::SIP_ALLOWED, 1)],
        );
    }
    assert_eq!(
        h.maps.sip_allowed().unwrap(),
        vec!["198.18.0.2".parse::<std::net::IpAddr>().unwrap()]
    );
    h.maps
        .sip_allow("198.18.0.2".parse().unwrap(), false)
        .unwrap();
    check(
        &mut h,
        "no longer allowed",
        &from("198.18.0.2"),
        XDP_DROP,
        &[(counter::SIP_DROPPED_SOURCE, 1)],
    );
    // Another port is not SIP.
    let mut f = Frame::udp(GW, 5070, register.clone());
    f.src = "198.18.0.9".parse().unwrap();
    check(
        &mut h,
        "port 5070",
        &f.bytes(),
        XDP_PASS,
        &[(counter::UDP_OTHER, 1)],
    );
    // Switched off: SIP passes untouched.
    g.enabled = 0;
    h.maps.set_sip_guard(&g).unwrap();
    check(
        &mut h,
        "guard off",
        &from("198.18.0.2"),
        XDP_PASS,
        &[(counter::UDP_OTHER, 1)],
    );
}
