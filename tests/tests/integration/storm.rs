//! A registration storm after a restart (no root, loopback): sipp
//! registers 20 000 devices (REGISTER with digest auth; its out-of-call
//! scenario answers the gateway's catalog queries), the daemon is killed
//! (SIGKILL) and started again with them in its registry, and all 20 000
//! register again as fast as a site does when it comes back: sipp at
//! 2 000/s, so the whole storm falls within 10 s. No sipp call fails,
//! every device is online and counted twice. Prints the daemon's restart
//! time with 20 000 devices in its store and the storm's time to all
//! online (the figures; the limits here only bound the waits).

use std::time::{Duration, Instant};

use gateway_tests::{
    have_tools,
    sipp::{device_ids, drive, write_answer_scenario, write_csv, Daemon, TempDir},
};

const N: usize = 20_000;
const RATE: u32 = 2_000;

fn online(d: &Daemon) -> u64 {
    d.get("/api/devices?limit=0")
        .ok()
        .and_then(|v| v["online"].as_u64())
        .unwrap_or(0)
}

#[test]
fn registration_storm_after_a_restart() {
    assert!(
        have_tools(&["sipp"]),
        "sipp is not installed (Debian package sip-tester)"
    );
    let dir = TempDir::new("storm");
    // Restarted on the same ports: fixed, below the ephemeral range (see
    // cascade.rs).
    let (sip_port, api_port) = (31110, 31111);
    let cfg = Daemon::config(
        dir.path(),
        sip_port,
        api_port,
        "password = \"pw\"\nquery_info = false\n",
        "",
    );
    let mut d = Daemon::start(&cfg, sip_port, api_port).unwrap();
    let answer = dir.path().join("answer.xml");
    write_answer_scenario(&answer, 1);
    let csv = dir.path().join("devices.csv");
    write_csv(&csv, &device_ids(0, N, "pw"));
    let register = |d: &Daemon| {
        drive(
            dir.path(),
            d.sip,
            "register_bench.xml",
            &csv,
            RATE,
            N as u32,
            d.pid().unwrap(),
            Some(&answer),
        )
        .unwrap()
    };
    let first = register(&d);
    assert_eq!((first.ok, first.failed), (N as u64, 0));
    d.wait_until(Duration::from_secs(60), "all registered", |d| {
        online(d) == N as u64
    })
    .unwrap();

    // The store commits within 20 ms of a change: let the last batch land
    // (a crash right after a registration may lose it; the device then
    // registers as new).
    std::thread::sleep(Duration::from_millis(500));
    d.kill9();
    let t0 = Instant::now();
    let mut d = Daemon::start(&cfg, sip_port, api_port).unwrap();
    let restart = t0.elapsed().as_secs_f64();
    let known = d.get("/api/devices?limit=0").unwrap();
    assert_eq!(known["count"], N as u64, "the registry came back");

    let t0 = Instant::now();
    let storm = register(&d);
    d.wait_until(Duration::from_secs(60), "all online after the storm", |d| {
        online(d) == N as u64 && d.stat("gateway_sip_registrations_total", "result=ok") == N as u64
    })
    .unwrap();
    let all_online = t0.elapsed().as_secs_f64();
    eprintln!(
        "storm: {N} devices re-registered after a kill -9 restart: sipp {} ok, {} failed in \
         {:.2} s at {RATE}/s asked ({:.0}/s achieved); all online after {all_online:.2} s; \
         daemon CPU {:.2} s ({:.3} ms per registration); restart with {N} devices in the \
         store: API up in {restart:.2} s",
        storm.ok,
        storm.failed,
        storm.secs,
        storm.ok as f64 / storm.secs,
        storm.cpu,
        storm.cpu * 1000.0 / storm.ok.max(1) as f64,
    );
    assert_eq!((storm.ok, storm.failed), (N as u64, 0), "no sipp failure");
    // Each device is on its second registration.
    let v = d
        .get(&format!("/api/devices/{}", device_ids(0, 1, "pw")[0].0))
        .unwrap();
    assert_eq!(v["registrations"], 2, "{v}");
    assert_eq!(v["online"], true, "{v}");
    assert!(d.stop(), "daemon did not stop cleanly:\n{}", d.log_tail(30));
}
