//! BPF_PROG_TEST_RUN of the XDP programs, for tests and benchmarks.

use anyhow::{Context as _, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};

/// What one test run returned.
pub struct Run {
    /// The program's verdict (XDP_PASS 2, XDP_TX 3, ...).
    pub verdict: u32,
    /// Mean time per repetition, as the kernel measured it.
    pub ns: f64,
    /// The frame as the program left it.
    pub data: Vec<u8>,
}

/// Runs XDP program `prog` (loaded) on `frame`, `repeat` times; with
/// `ingress`, as received on that interface of the calling thread's
/// network namespace (what `bpf_fib_lookup` starts from).
pub fn run(
    ebpf: &mut aya::Ebpf,
    prog: &str,
    frame: &[u8],
    ingress: Option<u32>,
    repeat: u32,
) -> Result<Run> {
    let p: &mut Xdp = ebpf
        .program_mut(prog)
        .with_context(|| format!("program {prog}"))?
        .try_into()?;
    // struct xdp_md: data, data_end (the frame's length), data_meta,
    // ingress_ifindex, rx_queue_index, egress_ifindex.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    if let Some(i) = ingress {
        ctx[12..16].copy_from_slice(&i.to_ne_bytes());
    }
    let mut out = vec![0u8; frame.len() + 256];
    let r = p.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: ingress.map(|_| &ctx[..]),
        repeat,
        ..Default::default()
    })?;
    out.truncate(r.data_size_out as usize);
    Ok(Run {
        verdict: r.return_value,
        ns: r.duration.as_nanos() as f64,
        data: out,
    })
}
