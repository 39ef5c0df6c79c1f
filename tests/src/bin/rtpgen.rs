//! A small RTP sender for the demo: N streams to consecutive even ports,
//! paced, with injected loss, reordering and duplicates. Bounded in time.
//!
//! rtpgen DST_IP FIRST_PORT STREAMS PPS SECONDS

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use gateway_tests::frames::Rtp;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        a.len() == 5,
        "usage: rtpgen DST_IP FIRST_PORT STREAMS PPS SECONDS"
    );
    let ip: std::net::IpAddr = a[0].parse()?;
    let first: u16 = a[1].parse()?;
    let streams: u16 = a[2].parse()?;
    let pps: u32 = a[3].parse()?;
    let secs: f64 = a[4].parse()?;
    anyhow::ensure!(
        streams > 0 && streams <= 64 && pps > 0 && pps <= 10_000 && secs > 0.0 && secs <= 600.0,
        "out of range"
    );
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    let start = Instant::now();
    let mut seq: u16 = 0;
    while start.elapsed().as_secs_f64() < secs {
        for s in 0..streams {
            let dst = (ip, first + 2 * s);
            // Stream s loses one packet in (50 + 25 s), swaps a pair every 200,
            // duplicates one every 300.
            if seq % (50 + 25 * s) == 7 {
                continue;
            }
            let mut order = vec![seq];
            if seq % 200 == 100 {
                order = vec![seq.wrapping_add(1), seq];
            } else if seq % 200 == 101 {
                continue;
            }
            for q in order {
                let r = Rtp {
                    marker: q % 10 == 9,
                    payload: 1200,
                    ts: q as u32 * (90_000 / pps),
                    ..Rtp::new(q, 0x1000 + s as u32)
                };
                sock.send_to(&r.bytes(), dst)?;
                if q % 300 == 150 {
                    sock.send_to(&r.bytes(), dst)?;
                }
            }
        }
        seq = seq.wrapping_add(1);
        let due = start + Duration::from_secs_f64(seq as f64 / pps as f64);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    Ok(())
}
