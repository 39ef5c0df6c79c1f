//! The SIP flood guard in XDP (root): the gateway attached to a veth in one
//! namespace with `[dataplane.sip_guard]`, 200 gb-sim devices registering
//! and sending keepalives from the other, and `sip-flood` sending
//! REGISTERs from 1000 other addresses of that namespace as fast as it can
//! for 10 s (the rig is `gateway_tests::flood`, shared with
//! `flood-bench`). The registered devices' address is on the allow list
//! and none of them goes offline; the flood is dropped in the kernel,
//! counted by reason; what passes stays within the configured global rate.
//! The same flood with the guard switched off (`gateway set --sip-guard
//! off`) shows what it would cost the daemon: both CPU figures are printed.

use gateway_tests::{
    cpu_secs,
    flood::{counter, Guard, Rig},
    require_root,
};

const DEVICES: u32 = 200;
const FLOOD_SECS: f64 = 10.0;
const GLOBAL_RATE: u64 = 500;

#[test]
fn root_sip_flood_is_dropped_in_the_kernel() {
    if !require_root("root_sip_flood_is_dropped_in_the_kernel") {
        return;
    }
    let guard = Guard {
        rate: 20,
        burst: 40,
        global_rate: GLOBAL_RATE,
    };
    let rig = Rig::new(
        "guard",
        DEVICES,
        guard,
        env!("CARGO_BIN_EXE_sip-flood").into(),
    )
    .expect("flood rig");
    let g = &rig.kernel()["sip_guard"];
    assert_eq!(g["enabled"], true, "{g}");
    assert_eq!(g["ports"], serde_json::json!([5060]), "{g}");
    assert_eq!(
        (g["rate"].as_u64(), g["burst"].as_u64()),
        (Some(20), Some(40)),
        "{g}"
    );

    let pid = rig.daemon.pid().expect("daemon pid");
    let before = rig.kernel();
    let cpu0 = cpu_secs(pid);
    let r = rig.flood(FLOOD_SECS).unwrap();
    let cpu_guarded = cpu_secs(pid) - cpu0;
    let after = rig.kernel();
    let sent = r["sent"].as_u64().unwrap();
    let delta = |name: &str| counter(&after, name) - counter(&before, name);
    let (allowed, passed) = (delta("sip_allowed"), delta("sip_passed"));
    let dropped = delta("sip_dropped_source") + delta("sip_dropped_global");
    eprintln!(
        "flood with the guard: {r}; kernel: allowed {allowed}, passed {passed}, dropped {dropped} \
         (source {}, global {}); daemon CPU {cpu_guarded:.2} s",
        delta("sip_dropped_source"),
        delta("sip_dropped_global")
    );
    assert!(sent > 10_000, "the flood sent too little to judge: {r}");
    // What came through is within the global rate (one second of burst).
    let secs = r["secs"].as_f64().unwrap();
    assert!(
        passed <= GLOBAL_RATE * (secs.ceil() as u64 + 2),
        "passed {passed} in {secs} s"
    );
    assert!(dropped >= sent / 2, "dropped {dropped} of {sent}");
    assert!(
        allowed > 0,
        "the devices' keepalives went on through the allow list"
    );
    // Every device stayed online through it.
    assert!(
        rig.all_online(),
        "{}",
        rig.daemon.get("/api/devices?limit=0").unwrap()
    );
    assert_eq!(rig.offline_transitions(), 0, "no device went offline");

    // The same flood without the guard: what it costs the daemon.
    let o = rig.set_guard("off");
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(rig.kernel()["sip_guard"]["enabled"], false);
    let before = rig.kernel();
    let cpu0 = cpu_secs(pid);
    let r = rig.flood(FLOOD_SECS).unwrap();
    let cpu_open = cpu_secs(pid) - cpu0;
    let after = rig.kernel();
    let delta = |name: &str| counter(&after, name) - counter(&before, name);
    assert_eq!(
        delta("sip_dropped_source") + delta("sip_dropped_global") + delta("sip_passed"),
        0,
        "the guard is off"
    );
    eprintln!(
        "flood without the guard: {r}; daemon CPU {cpu_open:.2} s (with the guard {cpu_guarded:.2} s)"
    );
    let o = rig.set_guard("10/20/300");
    assert_eq!(o.code, 0, "{}", o.stderr);
    let g = &rig.kernel()["sip_guard"];
    assert_eq!(
        (g["enabled"].as_bool(), g["rate"].as_u64()),
        (Some(true), Some(10)),
        "{g}"
    );
    let o = rig.set_guard("fast");
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("RATE/BURST/GLOBAL"), "{}", o.stderr);
    assert!(rig.stop(), "daemon did not stop cleanly");
}
