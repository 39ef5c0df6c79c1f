//! The device simulator (gb-sim) as the tests drive it: where its binary
//! is, the channel IDs it gives a device, and its per-stream report.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;

/// `gb-sim` next to the gateway binary (`cargo build -p gb-sim`).
pub fn bin() -> PathBuf {
    crate::gateway_bin().with_file_name("gb-sim")
}

/// Starts gb-sim as device `dev` (password "pw") against the SIP server
/// `server`, bound to `bind`, inside namespace `netns` when given. Its log
/// goes to `<dir>/<dev>.log`; the returned path is its `--status-file`.
/// `args` add the rest (channels, media, impairments, encryption).
pub fn spawn(
    netns: Option<&str>,
    server: &str,
    bind: &str,
    dev: &str,
    dir: &Path,
    args: &[&str],
) -> (KillOnDrop, PathBuf) {
    let status = dir.join(format!("{dev}.json"));
    let log = std::fs::File::create(dir.join(format!("{dev}.log"))).expect("simulator log");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin());
            c
        }
        None => Command::new(bin()),
    };
    let child = cmd
        .args(["--server", server, "--bind", bind])
        .args(["--device-id", dev, "--password", "pw"])
        .arg("--status-file")
        .arg(&status)
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("gb-sim (cargo build -p gb-sim)");
    (KillOnDrop(child), status)
}

/// [`spawn`] in the second namespace of `net` ("b", the cameras' side),
/// bound to its address, against the gateway's SIP server on port 5060 of
/// the first ("a").
pub fn spawn_in(
    net: &crate::netns::NetnsPair,
    dev: &str,
    dir: &Path,
    args: &[&str],
) -> (KillOnDrop, PathBuf) {
    spawn(
        Some(&net.b),
        &format!("{}:5060", net.addr_a),
        &net.addr_b,
        dev,
        dir,
        args,
    )
}

/// Channel `n` (1-based) of a simulated device, as gb-sim numbers them.
pub fn channel(dev: &str, n: u32) -> String {
    format!("{}131{}{:06}", &dev[..10], &dev[13..14], n)
}

/// gb-sim's `--status-file` report (Null until it is written).
pub fn report(path: &Path) -> Value {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The report's stream whose y= is `y` (Null when there is none yet).
pub fn stream(path: &Path, y: &str) -> Value {
    report(path)["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["y"] == y)
        .cloned()
        .unwrap_or_default()
}

/// A child process killed (SIGKILL) and reaped when dropped, so a test that
/// fails half-way leaves no simulator running. Tests that end normally
/// stop it first with SIGTERM (the simulator then unregisters).
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
