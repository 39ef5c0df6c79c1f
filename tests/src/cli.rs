//! The gateway's command line as the tests run it: `gateway ARGS`, in a
//! network namespace or not, with its exit code and output.

use std::process::{Command, Output};

use serde_json::Value;

/// A finished CLI run.
pub struct Out {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Out {
    /// Exit status 0.
    pub fn ok(&self) -> bool {
        self.code == 0
    }

    /// stdout as JSON; panics with both outputs when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

/// `gateway ARGS` (the binary of [`crate::gateway_bin`]).
pub fn gateway(args: &[&str]) -> Out {
    Command::new(crate::gateway_bin())
        .args(args)
        .output()
        .expect("run gateway")
        .into()
}

/// `gateway --netns NS ARGS`.
pub fn gateway_in(ns: &str, args: &[&str]) -> Out {
    let mut all = vec!["--netns", ns];
    all.extend_from_slice(args);
    gateway(&all)
}

/// The kernel's flow table of `iface` in namespace `ns`, as the JSON text
/// of `gateway flow list --json` (empty when the command fails).
pub fn kernel_flows(ns: &str, iface: &str) -> String {
    gateway_in(ns, &["flow", "list", "--iface", iface, "--json"]).stdout
}
