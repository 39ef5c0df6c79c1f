//! `sip-flood`: REGISTERs from many source addresses to a SIP port, as fast
//! as one thread can send, for a bounded time and count. The addresses
//! must be assigned to an interface of the namespace it runs in (the tests
//! add them in a namespace of their own, inside 198.18.0.0/15); it binds a
//! socket to each. Prints `{"sent": N, "errors": N, "secs": S, "pps": R}`.
//!
//! `sip-flood TARGET FIRST_SOURCE COUNT SECONDS MAX_PACKETS`

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() != 5 {
        eprintln!("usage: sip-flood TARGET FIRST_SOURCE COUNT SECONDS MAX_PACKETS");
        std::process::exit(2);
    }
    let target: SocketAddr = a[0].parse().expect("TARGET is IP:PORT");
    let first: Ipv4Addr = a[1].parse().expect("FIRST_SOURCE is an IPv4 address");
    let count: u32 = a[2].parse().expect("COUNT");
    let secs: f64 = a[3].parse().expect("SECONDS");
    let max: u64 = a[4].parse().expect("MAX_PACKETS");
    assert!(
        secs <= 60.0 && count <= 65_536,
        "bounded: 60 s, 65536 sources"
    );
    let base = u32::from(first);
    let socks: Vec<UdpSocket> = (0..count)
        .map(|i| {
            let ip = Ipv4Addr::from(base + i);
            let s = UdpSocket::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}: {e}"));
            s.set_nonblocking(true).expect("nonblocking");
            s
        })
        .collect();
    let msgs: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let ip = Ipv4Addr::from(base + i);
            let id = format!("3402000000132{:07}", 9_000_000 + i);
            format!(
                "REGISTER sip:34020000002000000001@3402000000 SIP/2.0\r\n\
                 Via: SIP/2.0/UDP {ip}:5060;rport;branch=z9hG4bKflood{i}\r\n\
                 From: <sip:{id}@3402000000>;tag={i}\r\nTo: <sip:{id}@3402000000>\r\n\
                 Call-ID: flood-{i}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{id}@{ip}:5060>\r\n\
                 Max-Forwards: 70\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n"
            )
            .into_bytes()
        })
        .collect();
    let (mut sent, mut errors) = (0u64, 0u64);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs);
    'outer: loop {
        for (s, m) in socks.iter().zip(&msgs) {
            match s.send_to(m, target) {
                Ok(_) => sent += 1,
                Err(_) => errors += 1,
            }
            if sent >= max {
                break 'outer;
            }
        }
        if Instant::now() >= end {
            break;
        }
    }
    let el = t0.elapsed().as_secs_f64();
    println!(
        "{{\"sent\": {sent}, \"errors\": {errors}, \"secs\": {el:.3}, \"pps\": {:.0}}}",
        sent as f64 / el
    );
}
