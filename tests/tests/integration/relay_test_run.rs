//! BPF_PROG_TEST_RUN of the XDP relay (root only), inside a namespace of
//! its own with static neighbours so the FIB lookups are deterministic:
//! the exact bytes of rewritten IPv4, IPv6 and VLAN-tagged packets, their
//! checksums recomputed independently (`frames::verify_checksums`), and
//! every reason a packet is left to the daemon, each counted.

use std::process::Command;

use aya::programs::Xdp;
use gateway::dataplane::{
    attach::{self, Settings},
    flows::FlowSpec,
    relay::{self, Mode, Output},
    Maps,
};
use gateway_common::{counter, FlowKey, VlanDev};
use gateway_tests::{
    frames::{fill_udp_checksum, verify_checksums, Frame, Rtp},
    netns::{try_in_netns, NetnsPair},
    require_root,
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// Static neighbours (MAC ends in the last address byte).
const NEIGH_V4: &str = "198.18.0.9";
const NEIGH_V6: &str = "2001:db8::9";
const NEIGH_VLAN: &str = "198.18.100.9";
const NEIGH_DUMMY: &str = "198.18.200.9";

fn sh(ns: &str, args: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args.split_whitespace())
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mac_of(ns: &str, dev: &str) -> [u8; 6] {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", dev])
        .output()
        .expect("ip link");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j");
    let s = v[0]["address"].as_str().expect("address");
    let mut m = [0u8; 6];
    for (b, h) in m.iter_mut().zip(s.split(':')) {
        *b = u8::from_str_radix(h, 16).unwrap();
    }
    m
}

struct Harness {
    ebpf: aya::Ebpf,
    maps: Maps,
    ifindex: u32,
}

impl Harness {
    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let r =
            gateway_tests::xdp::run(&mut self.ebpf, "gateway_xdp", frame, Some(self.ifindex), 1)
                .expect("BPF_PROG_TEST_RUN");
        (r.verdict, r.data)
    }

    fn counter(&mut self, c: u32) -> u64 {
        self.maps.counters().unwrap()[c as usize]
    }
}

fn rtp(seq: u16) -> Rtp {
    let mut r = Rtp::new(seq, 0xcafe_0001);
    // The timestamp must not follow the rewritten sequence number.
    r.ts = 0x0102_0304;
    r.payload = 200;
    r
}

/// A camera's packet to the gateway's media port, with a valid UDP checksum.
fn input(src: &str, dst: &str, seq: u16, vlan: bool) -> Vec<u8> {
    let mut f = Frame::rtp(dst, 30000, &rtp(seq));
    f.src = src.parse().unwrap();
    if vlan {
        f.vlans = vec![0x8100];
    }
    let mut b = f.bytes();
    fill_udp_checksum(&mut b);
    b
}

/// The copy the relay must send: the same RTP payload from `from` to
/// `to`, SSRC 0x51510001, sequence number `seq`, TTL 64, next-hop MACs.
#[derive(Clone, Copy)]
struct Want<'a> {
    from: &'a str,
    sport: u16,
    to: &'a str,
    dport: u16,
    seq: u16,
    dmac: [u8; 6],
    smac: [u8; 6],
    vlan: bool,
}

impl Want<'_> {
    fn bytes(&self) -> Vec<u8> {
        let mut r = rtp(self.seq);
        r.ssrc = 0x5151_0001;
        let mut f = Frame::rtp(self.to, self.dport, &r);
        f.src = self.from.parse().unwrap();
        f.sport = self.sport;
        if self.vlan {
            f.vlans = vec![0x8100];
        }
        let mut b = f.bytes();
        b[..6].copy_from_slice(&self.dmac);
        b[6..12].copy_from_slice(&self.smac);
        fill_udp_checksum(&mut b);
        b
    }
}

/// Runs `input`: the verdict must be `verdict` and the packet exactly
/// `want`, whose checksums verify when computed from scratch.
fn relays(
    h: &mut Harness,
    name: &str,
    input: &[u8],
    verdict: u32,
    want: &Want,
) -> anyhow::Result<()> {
    let (v, got) = h.run(input);
    assert_eq!(v, verdict, "{name}: verdict");
    assert_eq!(got, want.bytes(), "{name}: rewritten bytes");
    verify_checksums(&got).map_err(|e| anyhow::anyhow!("{name}: {e}"))
}

fn out(dest: &str, from: &str) -> Output {
    Output {
        dest: dest.parse().unwrap(),
        from: from.parse().unwrap(),
        ssrc: 0x5151_0001,
        seq_delta: 1000,
        start_seq: None,
    }
}

#[test]
fn relay_rewrites_and_fallbacks() {
    if !require_root("relay_rewrites_and_fallbacks") {
        return;
    }
    let pair = NetnsPair::new("rly").expect("namespaces");
    let ns = pair.a.clone();
    let dev = pair.veth_a.clone();
    let vdev = format!("{dev}v");
    for cmd in [
        format!("ip addr add 2001:db8::1/64 dev {dev} nodad"),
        format!("ip neigh add {NEIGH_V4} lladdr 02:00:00:00:00:09 dev {dev} nud permanent"),
        format!("ip neigh add {NEIGH_V6} lladdr 02:00:00:00:00:09 dev {dev} nud permanent"),
        // The VLAN device: this kernel has no 8021q, so a veth stands in
        // for it; XDP only asks VLAN_DEVS about the route's egress device.
        format!("ip link add {vdev} type veth peer name {vdev}p"),
        format!("ip addr add 198.18.100.1/24 dev {vdev}"),
        format!("ip link set {vdev} up"),
        format!("ip link set {vdev}p up"),
        format!("ip neigh add {NEIGH_VLAN} lladdr 02:00:00:00:00:0a dev {vdev} nud permanent"),
        // Another interface (redirect target).
        "ip link add gwother type veth peer name gwotherp".to_string(),
        "ip addr add 198.18.200.1/24 dev gwother".to_string(),
        "ip link set gwother up".to_string(),
        "ip link set gwotherp up".to_string(),
        format!("ip neigh add {NEIGH_DUMMY} lladdr 02:00:00:00:00:0b dev gwother nud permanent"),
    ] {
        sh(&ns, &cmd);
    }
    let mac = mac_of(&ns, &dev);
    let vmac = mac_of(&ns, &vdev);
    let ns2 = ns.clone();
    try_in_netns(&ns.clone(), move || {
        // One CPU for every run (BPF_PROG_TEST_RUN runs on the caller's):
        // the per-output first sequence is then the first run's, not the
        // pick of a per-CPU merge between slots whose packets reused an
        // older frame's arrival time (a flake first seen in the arm64 VM).
        gateway::sys::pin_thread_to_cpu(0)?;
        let ifindex = gateway::sys::if_nametoindex(&dev).unwrap();
        let vindex = gateway::sys::if_nametoindex(&vdev).unwrap();
        let dummy = gateway::sys::if_nametoindex("gwother").unwrap();
        let (mut ebpf, mut maps) = attach::load(64, None)?;
        let prog: &mut Xdp = ebpf.program_mut("gateway_xdp").unwrap().try_into()?;
        prog.load()?;
        let mut cfg = gateway_common::Config::default();
        Settings {
            media_ports: (30000, 30999),
            unknown_drop: false,
            dscp: None,
            egress_ports: (30000, 30999),
        }
        .apply(&mut cfg);
        maps.set_config(&cfg)?;
        maps.add_vlan_dev(
            vindex,
            &VlanDev {
                parent_ifindex: ifindex,
                vid: 100,
                _pad: 0,
            },
        )?;
        let mut h = Harness {
            ebpf,
            maps,
            ifindex,
        };
        let add = |h: &mut Harness, local: &str| -> anyhow::Result<FlowKey> {
            let (k, _) = h.maps.add_flow(&FlowSpec {
                local: Some(local.parse()?),
                name: "relay".into(),
                clock_rate: 90_000,
                ..Default::default()
            })?;
            Ok(k)
        };
        let k4 = add(&mut h, "198.18.0.1:30000")?;
        let k6 = add(&mut h, "[2001:db8::1]:30000")?;
        let kv = add(&mut h, "198.18.100.1:30000")?;
        let cam4: std::net::SocketAddr = "198.18.0.2:40000".parse()?;
        let cam6: std::net::SocketAddr = "[2001:db8::2]:40000".parse()?;
        let camv: std::net::SocketAddr = "198.18.0.2:40000".parse()?;
        let e4 = relay::entry(
            cam4,
            Mode::Xdp,
            &[out("198.18.0.9:6000", "198.18.0.1:30002")],
        )?;
        h.maps.set_relay(&k4, &e4)?;

        // Forwarding off: the FIB refuses; the packet goes up, counted.
        sh_forwarding(&ns2, false);
        let before = h.counter(counter::RELAY_PASS_FWD_DISABLED);
        let (v, _) = h.run(&input("198.18.0.2", "198.18.0.1", 7, false));
        assert_eq!(v, XDP_PASS, "forwarding disabled: passed");
        let all = h.maps.counters()?;
        assert_eq!(
            h.counter(counter::RELAY_PASS_FWD_DISABLED),
            before + 1,
            "counters: {:?}",
            counter::NAMES
                .iter()
                .zip(all)
                .filter(|(_, v)| *v != 0)
                .collect::<Vec<_>>()
        );
        sh_forwarding(&ns2, true);

        // IPv4: exact bytes, and the sequence number wrapping.
        let neigh = [2, 0, 0, 0, 0, 9];
        let v4 = |seq| Want {
            from: "198.18.0.1",
            sport: 30002,
            to: NEIGH_V4,
            dport: 6000,
            seq,
            dmac: neigh,
            smac: mac,
            vlan: false,
        };
        let v4_in = |seq| input("198.18.0.2", "198.18.0.1", seq, false);
        relays(&mut h, "IPv4", &v4_in(7), XDP_TX, &v4(1007))?;
        // 65000 + 1000 = 464 (mod 2^16).
        relays(
            &mut h,
            "IPv4 sequence wrap",
            &v4_in(65000),
            XDP_TX,
            &v4(464),
        )?;
        // A UDP checksum of 0 (none) stays 0.
        let mut nocsum = input("198.18.0.2", "198.18.0.1", 8, false);
        let l = nocsum.len();
        let udp_csum_at = 14 + 20 + 6;
        nocsum[udp_csum_at..udp_csum_at + 2].copy_from_slice(&[0, 0]);
        let (v, got) = h.run(&nocsum);
        assert_eq!(v, XDP_TX);
        assert_eq!(got.len(), l);
        assert_eq!(
            &got[udp_csum_at..udp_csum_at + 2],
            &[0, 0],
            "no checksum stays none"
        );
        verify_checksums(&got).map_err(anyhow::Error::msg)?;

        // IPv6.
        let e6 = relay::entry(
            cam6,
            Mode::Xdp,
            &[out("[2001:db8::9]:6000", "[2001:db8::1]:30002")],
        )?;
        h.maps.set_relay(&k6, &e6)?;
        let want = Want {
            from: "2001:db8::1",
            to: NEIGH_V6,
            seq: 1009,
            ..v4(0)
        };
        relays(
            &mut h,
            "IPv6",
            &input("2001:db8::2", "2001:db8::1", 9, false),
            XDP_TX,
            &want,
        )?;

        // VLAN 100: the route goes through the VLAN device: sent back out
        // tagged.
        let ev = relay::entry(
            camv,
            Mode::Xdp,
            &[out("198.18.100.9:6000", "198.18.100.1:30002")],
        )?;
        h.maps.set_relay(&kv, &ev)?;
        let want = Want {
            from: "198.18.100.1",
            to: NEIGH_VLAN,
            seq: 1010,
            dmac: [2, 0, 0, 0, 0, 0x0a],
            smac: vmac,
            vlan: true,
            ..v4(0)
        };
        relays(
            &mut h,
            "VLAN (tag kept)",
            &input("198.18.0.2", "198.18.100.1", 10, true),
            XDP_TX,
            &want,
        )?;

        // Fallbacks, each counted, the packet untouched.
        let fallback = |h: &mut Harness, what: &str, frame: &[u8], reason: u32| {
            let before = h.counter(reason);
            let (v, got) = h.run(frame);
            assert_eq!(v, XDP_PASS, "{what}: passed to the daemon");
            assert_eq!(got, frame, "{what}: left untouched");
            assert_eq!(h.counter(reason), before + 1, "{what}: counted");
        };
        // A packet from another source than the confirmed one.
        fallback(
            &mut h,
            "unconfirmed source",
            &input("198.18.0.3", "198.18.0.1", 11, false),
            counter::RELAY_PASS_SOURCE,
        );
        // A first fragment.
        let mut frag = Frame::rtp("198.18.0.1", 30000, &rtp(12));
        frag.more_fragments = true;
        fallback(
            &mut h,
            "fragment",
            &frag.bytes(),
            counter::RELAY_PASS_FRAGMENT,
        );
        // A tagged packet whose destination is not on that VLAN.
        fallback(
            &mut h,
            "VLAN mismatch",
            &input("198.18.0.2", "198.18.0.1", 13, true),
            counter::RELAY_PASS_VLAN,
        );
        // No neighbour entry for the destination.
        h.maps.set_relay(
            &k4,
            &relay::entry(
                cam4,
                Mode::Xdp,
                &[out("198.18.0.50:6000", "198.18.0.1:30002")],
            )?,
        )?;
        fallback(
            &mut h,
            "unresolved neighbour",
            &input("198.18.0.2", "198.18.0.1", 14, false),
            counter::RELAY_PASS_NO_NEIGH,
        );
        // Another interface, not allowed for redirects; then allowed.
        h.maps.set_relay(
            &k4,
            &relay::entry(
                cam4,
                Mode::Xdp,
                &[out("198.18.200.9:6000", "198.18.200.1:30002")],
            )?,
        )?;
        fallback(
            &mut h,
            "no TX port",
            &input("198.18.0.2", "198.18.0.1", 15, false),
            counter::RELAY_PASS_NO_TX_PORT,
        );
        h.maps.add_tx_port(dummy)?;
        let want = Want {
            from: "198.18.200.1",
            to: NEIGH_DUMMY,
            seq: 1016,
            dmac: [2, 0, 0, 0, 0, 0x0b],
            smac: mac_of_in_thread("gwother"),
            ..v4(0)
        };
        relays(
            &mut h,
            "redirect to an allowed interface",
            &v4_in(16),
            XDP_REDIRECT,
            &want,
        )?;
        // Too big for the route's MTU.
        sh_mtu(&ns2, "gwother", 1280);
        let mut big = Frame::rtp("198.18.0.1", 30000, &{
            let mut r = rtp(17);
            r.payload = 1300;
            r
        });
        big.src = "198.18.0.2".parse()?;
        let mut bigb = big.bytes();
        fill_udp_checksum(&mut bigb);
        fallback(&mut h, "MTU", &bigb, counter::RELAY_PASS_MTU);

        // Per-output counters: what was sent and what was left.
        let slot = h
            .maps
            .flows()?
            .iter()
            .find(|(k, _)| *k == k4)
            .unwrap()
            .1
            .slot;
        let st = h.maps.relay_stats(slot, 0)?;
        assert_eq!(st.packets, 4, "IPv4 copies sent: 7, 65000, 8, 16");
        assert_eq!(st.first_seq, Some(7));
        assert_eq!(
            st.passed, 7,
            "left to the daemon: fwd-disabled, source, fragment, VLAN, neighbour, TX port, MTU"
        );

        // Removing the relay: the flow is counted again, nothing relayed.
        h.maps.clear_relay(&k4)?;
        let (v, got) = h.run(&input("198.18.0.2", "198.18.0.1", 18, false));
        assert_eq!(v, XDP_PASS);
        assert_eq!(got, input("198.18.0.2", "198.18.0.1", 18, false));
        assert!(h.maps.relays()?.iter().all(|(k, _, _)| *k != k4));
        Ok(())
    })
    .expect("relay fixtures");
}

fn mac_of_in_thread(dev: &str) -> [u8; 6] {
    // This thread is in the namespace: read its sysfs view through `ip`.
    let out = Command::new("ip")
        .args(["-j", "link", "show", dev])
        .output()
        .expect("ip link");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j");
    let s = v[0]["address"].as_str().expect("address");
    let mut m = [0u8; 6];
    for (b, h) in m.iter_mut().zip(s.split(':')) {
        *b = u8::from_str_radix(h, 16).unwrap();
    }
    m
}

fn sh_forwarding(ns: &str, on: bool) {
    let v = if on { 1 } else { 0 };
    sh(ns, &format!("sysctl -qw net.ipv4.conf.all.forwarding={v}"));
    sh(ns, &format!("sysctl -qw net.ipv6.conf.all.forwarding={v}"));
}

fn sh_mtu(ns: &str, dev: &str, mtu: u32) {
    sh(ns, &format!("ip link set {dev} mtu {mtu}"));
}
