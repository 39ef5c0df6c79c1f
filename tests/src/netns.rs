//! Two network namespaces joined by a veth pair, addressed from
//! 198.18.0.0/15 with no default route, removed on drop (also when a test
//! fails and unwinds); and running code inside a namespace, on a thread of
//! its own.

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct NetnsPair {
    /// Namespace of the gateway side ("a") and of the sender ("b").
    pub a: String,
    pub b: String,
    pub veth_a: String,
    pub veth_b: String,
    pub addr_a: String,
    pub addr_b: String,
}

fn ip(args: &[&str]) -> std::io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl NetnsPair {
    /// `tag`: a short name for the test (part of the namespace names).
    /// The names hold the process ID and a per-process sequence number, so
    /// tests running side by side, in one process or several, never share
    /// a namespace or an interface name.
    pub fn new(tag: &str) -> std::io::Result<Self> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        // At most 7 + 1 + 3 characters: veth names stay within IFNAMSIZ.
        let id = format!("{}-{n}", std::process::id());
        let p = NetnsPair {
            a: format!("gwt-{tag}-a{id}"),
            b: format!("gwt-{tag}-b{id}"),
            veth_a: format!("gva{id}"),
            veth_b: format!("gvb{id}"),
            addr_a: "198.18.0.1".into(),
            addr_b: "198.18.0.2".into(),
        };
        // From here on Drop cleans up whatever was created.
        ip(&["netns", "add", &p.a])?;
        ip(&["netns", "add", &p.b])?;
        ip(&[
            "link", "add", &p.veth_a, "netns", &p.a, "type", "veth", "peer", "name", &p.veth_b,
            "netns", &p.b,
        ])?;
        ip(&[
            "-n",
            &p.a,
            "addr",
            "add",
            &format!("{}/24", p.addr_a),
            "dev",
            &p.veth_a,
        ])?;
        ip(&[
            "-n",
            &p.b,
            "addr",
            "add",
            &format!("{}/24", p.addr_b),
            "dev",
            &p.veth_b,
        ])?;
        for (ns, dev) in [(&p.a, &p.veth_a), (&p.b, &p.veth_b)] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(p)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and with it the pair.
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

/// Runs `f` on a new thread that first enters network namespace `ns`
/// (setns changes only the calling thread's namespace, so the test's own
/// thread stays where it is) and returns what `f` returns. Panics when the
/// namespace cannot be entered; a panic of `f` goes on in the caller.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    let thread = std::thread::spawn(move || {
        gateway::sys::enter_netns(&ns)
            .unwrap_or_else(|e| panic!("entering network namespace {ns}: {e}"));
        f()
    });
    match thread.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// As [`in_netns`] for a fallible `f`: entering the namespace failing, `f`
/// failing or panicking are all an Err.
pub fn try_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        gateway::sys::enter_netns(&ns)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in network namespace panicked"))?
}
