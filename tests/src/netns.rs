//! Two network namespaces joined by a veth pair, or a chain of them,
//! addressed from 198.18.0.0/15 with no default route, removed on drop
//! (also when a test fails and unwinds); and running code inside a
//! namespace, on a thread of its own.

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

/// Joins namespaces `a.0` and `b.0` with a veth pair (`a.1` in `a.0`,
/// `b.1` in `b.0`), addresses `a.2` and `b.2` (/24) on its ends, and
/// brings the ends and both loopbacks up. No route beyond the /24.
fn veth(a: (&str, &str, &str), b: (&str, &str, &str)) -> std::io::Result<()> {
    ip(&[
        "link", "add", a.1, "netns", a.0, "type", "veth", "peer", "name", b.1, "netns", b.0,
    ])?;
    for (ns, dev, addr) in [a, b] {
        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
        ip(&["-n", ns, "link", "set", dev, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
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
        veth((&p.a, &p.veth_a, &p.addr_a), (&p.b, &p.veth_b, &p.addr_b))?;
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

/// Namespaces in a row, each joined to the next by a veth pair: link `i`
/// joins `ns[i]` (address 198.18.`i`.1) and `ns[i + 1]` (198.18.`i`.2),
/// so a middle namespace has one address on each side and the ends reach
/// only their neighbour (no default route, no forwarding). For a chain of
/// platforms: cameras -> a lower-level gateway -> its superior. Removed on
/// drop, as [`NetnsPair`].
pub struct NetnsChain {
    pub ns: Vec<String>,
    pub links: Vec<Link>,
}

/// One veth pair of a [`NetnsChain`]: `left` ends in `ns[i]`, `right` in
/// `ns[i + 1]`.
pub struct Link {
    pub left_dev: String,
    pub right_dev: String,
    pub left_addr: String,
    pub right_addr: String,
}

impl NetnsChain {
    /// `n` (2..=9) namespaces named after `tag`, unique per process and
    /// call as [`NetnsPair::new`]'s.
    pub fn new(tag: &str, n: usize) -> std::io::Result<Self> {
        assert!((2..=9).contains(&n), "a chain of 2 to 9 namespaces");
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        // At most 2 + 1 + 7 + 1 + 3 characters: within IFNAMSIZ.
        let id = format!("{}-{seq}", std::process::id());
        let mut c = NetnsChain {
            ns: Vec::new(),
            links: Vec::new(),
        };
        // Drop removes whatever was created, also on an early return.
        for i in 0..n {
            let ns = format!("gwt-{tag}-{i}n{id}");
            ip(&["netns", "add", &ns])?;
            c.ns.push(ns);
        }
        for i in 0..n - 1 {
            let l = Link {
                left_dev: format!("gl{i}{id}"),
                right_dev: format!("gr{i}{id}"),
                left_addr: format!("198.18.{i}.1"),
                right_addr: format!("198.18.{i}.2"),
            };
            veth(
                (&c.ns[i], &l.left_dev, &l.left_addr),
                (&c.ns[i + 1], &l.right_dev, &l.right_addr),
            )?;
            c.links.push(l);
        }
        Ok(c)
    }
}

impl Drop for NetnsChain {
    fn drop(&mut self) {
        for ns in &self.ns {
            let _ = ip(&["netns", "del", ns]);
        }
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
