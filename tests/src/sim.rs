//! The device simulator (gb-sim) as the tests drive it: where its binary
//! is, the channel IDs it gives a device, and its per-stream report.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// `gb-sim` next to the gateway binary (`cargo build -p gb-sim`).
pub fn bin() -> PathBuf {
    crate::gateway_bin().with_file_name("gb-sim")
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
