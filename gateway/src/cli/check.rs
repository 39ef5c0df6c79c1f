//! `gateway check`: can this machine's kernel run the gateway's eBPF
//! programs, and if not, why not.
//!
//! Each check names what it looked at and, when it fails, the reason and
//! what to do. The decisive checks load the embedded object (maps created
//! at a small size, global data written) and run the verifier on the XDP
//! and TC programs exactly as `attach` does, without attaching anything;
//! then they read the maps the way the daemon does (mmap, and
//! BPF_MAP_LOOKUP_BATCH, with one lookup per global counter where the
//! kernel cannot batch-read per-CPU arrays). Nothing is pinned and nothing
//! stays behind: every object is released when the command exits.
//!
//! The documented requirements, and why each one is needed, are in
//! `docs/kernel-requirements.md`.

use std::{io::Write as _, path::Path};

use anyhow::Result;

use crate::dataplane::probe::{report, Check, Report, Status};

/// `gateway check` options.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Also tell whether native (driver) XDP is possible on this interface.
    #[arg(long, value_name = "IF")]
    pub iface: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command: prints the report and fails (exit status 1) when a
/// required check failed.
pub fn run(args: &CheckArgs, netns: Option<&str>, bpffs: &Path) -> Result<()> {
    let report = report(args.iface.as_deref(), netns, bpffs);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    let failed: Vec<&Check> = report.failed().collect();
    if let Some(first) = failed.first() {
        anyhow::bail!(
            "not ready to run the data plane: {} required check{} failed ({}); first: {}: {}",
            failed.len(),
            if failed.len() == 1 { "" } else { "s" },
            failed.iter().map(|c| c.id).collect::<Vec<_>>().join(", "),
            first.name,
            first.detail
        );
    }
    Ok(())
}

fn print_table(r: &Report) {
    let out = std::io::stdout();
    let mut out = out.lock();
    let _ = writeln!(
        out,
        "gateway check: kernel {} ({}), documented minimum {}",
        r.kernel, r.arch, r.min_kernel
    );
    let _ = writeln!(out);
    let w = r.checks.iter().map(|c| c.name.len()).max().unwrap_or(10);
    let _ = writeln!(out, "{:<w$}  {:<6}  DETAIL", "CHECK", "STATUS");
    for c in &r.checks {
        let status = if c.required || c.status != Status::Fail {
            c.status.label().to_string()
        } else {
            "fail*".to_string()
        };
        let mut lines = c.detail.lines();
        let _ = writeln!(
            out,
            "{:<w$}  {:<6}  {}",
            c.name,
            status,
            lines.next().unwrap_or("")
        );
        for l in lines {
            let _ = writeln!(out, "{:<w$}  {:<6}  {}", "", "", l);
        }
    }
    let _ = writeln!(out);
    let failed: Vec<&str> = r.failed().map(|c| c.id).collect();
    if failed.is_empty() {
        let warns = r.checks.iter().filter(|c| c.status == Status::Warn).count();
        let _ = writeln!(
            out,
            "result: OK: this kernel can load and run the gateway's XDP and TC programs{}",
            if warns > 0 {
                format!(" ({warns} warning{})", if warns == 1 { "" } else { "s" })
            } else {
                String::new()
            }
        );
    } else {
        let _ = writeln!(
            out,
            "result: NOT OK: {} required check{} failed: {}",
            failed.len(),
            if failed.len() == 1 { "" } else { "s" },
            failed.join(", ")
        );
    }
    let _ = writeln!(out, "(requirements: docs/kernel-requirements.md)");
}
