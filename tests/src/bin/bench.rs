//! Benchmarks of the data plane (root). Prints figures and ratios against
//! baselines measured in the same run; asserts nothing about speed.
//!
//! 1. XDP cost per packet (BPF_PROG_TEST_RUN with repeat) of the full
//!    parse + classify + count path, minus an empty XDP program, at 1, 1 000
//!    and 65 536 streams.
//! 2. Read-out of 65 536 streams: per-key lookups of a per-CPU hash vs one
//!    BPF_MAP_LOOKUP_BATCH walk of it vs the mmapped per-CPU slot array,
//!    each producing the same merged per-stream view.
//!
//! `--quick` lowers repeat counts (CI); `--emulated` labels the figures as
//! measured in an emulated VM (`cargo xtask vm-test`).

use std::{net::SocketAddr, os::fd::AsFd, time::Instant};

use aya::programs::Xdp;
use gateway::{
    dataplane::{
        attach::{self, Settings},
        flows::FlowSpec,
    },
    sys::{self, bpf::BPF_MAP_TYPE_PERCPU_HASH, BatchReader},
};
use gateway_common::{stats, Config, StreamStats};
use gateway_tests::frames::{Frame, Rtp};

fn main() -> anyhow::Result<()> {
    if !sys::is_root() {
        anyhow::bail!("the benchmarks need root (BPF)");
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let emulated = std::env::args().any(|a| a == "--emulated");
    println!(
        "# gateway data-plane benchmarks ({}); CPU: {}",
        if quick { "quick" } else { "full" },
        gateway_tests::cpu_model()
    );
    if emulated {
        println!(
            "# EMULATED: a qemu-system (TCG) guest of `cargo xtask vm-test`: the kernel and its \
             JIT are real, the CPU is not; read only the ratios measured in this run, never the \
             absolute times"
        );
    }
    xdp_cost(quick)?;
    readout(quick)?;
    Ok(())
}

/// `n` flows; `any`: port-level any-address flows expecting an SSRC, as
/// the daemon's sessions are (the array fast path), else keyed by the
/// exact address (and beyond 1 000 streams by SSRC: the hash path).
fn specs(n: u32, any: bool) -> Vec<FlowSpec> {
    (0..n)
        .map(|i| {
            let port = 30000 + (i % 1000) as u16;
            if any {
                return FlowSpec {
                    local: Some(SocketAddr::from(([0, 0, 0, 0], port))),
                    ssrc: None,
                    expect_ssrc: Some(7),
                    name: String::new(),
                    clock_rate: 90_000,
                };
            }
            FlowSpec {
                local: Some(SocketAddr::from(([198, 18, 0, 1], port))),
                // Beyond 1 000 streams, several share a port split by SSRC.
                ssrc: (n > 1000).then_some(i),
                expect_ssrc: None,
                name: String::new(),
                clock_rate: 90_000,
            }
        })
        .collect()
}

fn run_ns(ebpf: &mut aya::Ebpf, prog: &str, frame: &[u8], repeat: u32) -> anyhow::Result<f64> {
    Ok(gateway_tests::xdp::run(ebpf, prog, frame, None, repeat)?.ns)
}

fn xdp_cost(quick: bool) -> anyhow::Result<()> {
    let repeat = if quick { 20_000 } else { 200_000 };
    let samples = if quick { 8 } else { 32 };
    println!(
        "\n## XDP cost per packet (BPF_PROG_TEST_RUN, repeat {repeat}, {samples} streams sampled)"
    );
    println!(
        "{:>5} {:>7} {:>10} {:>10} {:>11} {:>8} {:>10} {:>11} {:>7}",
        "key",
        "streams",
        "empty ns",
        "full ns",
        "full-empty",
        "arp ns",
        "other-udp",
        "no-flow ns",
        "ratio"
    );
    for (n, any) in [
        (1u32, false),
        (1000, false),
        (65536, false),
        (1, true),
        (1000, true),
    ] {
        let (mut ebpf, mut maps) = attach::load(n.max(64), None)?;
        for name in ["gateway_xdp", "gateway_xdp_noop"] {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow::anyhow!("no {name}"))?
                .try_into()?;
            p.load()?;
        }
        let mut cfg = Config::default();
        Settings {
            media_ports: (30000, 30999),
            unknown_drop: true,
            dscp: None,
            egress_ports: (30000, 30999),
        }
        .apply(&mut cfg);
        maps.set_config(&cfg)?;
        if n == 1 && !any {
            // The size of what runs: every branch, the relay included.
            let p: &mut Xdp = ebpf
                .program_mut("gateway_xdp")
                .ok_or_else(|| anyhow::anyhow!("no gateway_xdp"))?
                .try_into()?;
            let info = p.info()?;
            let xlated = info.size_translated().unwrap_or(0);
            println!(
                "(gateway_xdp after the verifier: {} instructions ({xlated} bytes), {} bytes of machine code)",
                xlated / 8,
                info.size_jitted()
            );
        }
        let added = maps.add_flows(&specs(n, any))?;
        let (mut empty, mut full) = (0.0, 0.0);
        let picks: Vec<usize> = (0..samples)
            .map(|i| (i as usize * added.len()) / samples as usize)
            .collect();
        for &i in &picks {
            let (k, _) = &added[i];
            let ssrc = if k.by_ssrc != 0 { k.ssrc } else { 7 };
            let frame = Frame::rtp(
                "198.18.0.1",
                k.port,
                &Rtp {
                    payload: 1388,
                    ..Rtp::new(1, ssrc)
                },
            )
            .bytes();
            empty += run_ns(&mut ebpf, "gateway_xdp_noop", &frame, repeat)?;
            full += run_ns(&mut ebpf, "gateway_xdp", &frame, repeat)?;
        }
        let other = Frame::rtp("198.18.0.1", 5060, &Rtp::new(1, 1)).bytes();
        let other_ns = run_ns(&mut ebpf, "gateway_xdp", &other, repeat)?;
        // A media port without a flow (dropped): parse, RTP check, lookups.
        let unknown = Frame::rtp("198.18.0.1", 30999, &Rtp::new(1, 1)).bytes();
        let unknown_ns = run_ns(&mut ebpf, "gateway_xdp", &unknown, repeat)?;
        let arp_ns = run_ns(
            &mut ebpf,
            "gateway_xdp",
            &gateway_tests::frames::arp(),
            repeat,
        )?;
        let (empty, full) = (empty / picks.len() as f64, full / picks.len() as f64);
        println!(
            "{:>5} {:>7} {:>10.1} {:>10.1} {:>11.1} {:>8.1} {:>10.1} {:>11.1} {:>7.2}",
            if any { "any" } else { "exact" },
            n,
            empty,
            full,
            full - empty,
            arp_ns,
            other_ns,
            unknown_ns,
            full / empty.max(0.001)
        );
    }
    println!(
        "(key exact: flows keyed by address and port (and SSRC beyond 1 000 streams), hash lookups; \
         any: port-level any-address flows as the daemon's sessions, array lookups. \
         full: a packet of a flow, parsed, matched, counted; arp: not IP; other-udp: UDP to a port \
         with no flow outside the media range; no-flow: RTP to a media port without a flow, dropped. \
         Repeating one frame exercises the duplicate-sequence path after the first run; goal: \
         full-empty <= 30 ns)"
    );
    Ok(())
}

fn readout(quick: bool) -> anyhow::Result<()> {
    const N: u32 = 65536;
    let rounds = if quick { 3 } else { 10 };
    let ncpus = gateway::dataplane::possible_cpus()? as usize;
    println!("\n## Read-out of {N} streams x {ncpus} CPUs (best of {rounds})");
    let size = size_of::<StreamStats>();
    let stride = sys::value_stride(size);

    // Baseline map: a per-CPU hash keyed by stream, as most designs keep it.
    let fd = sys::create_map(BPF_MAP_TYPE_PERCPU_HASH, 4, size as u32, N)?;
    let mut value = vec![0u8; stride * ncpus];
    for i in 0..N {
        for c in 0..ncpus {
            let s = StreamStats {
                packets: (i + c as u32) as u64,
                received: 1,
                flags: 1,
                ..Default::default()
            };
            value[c * stride..c * stride + size].copy_from_slice(sys::pod_bytes(&s));
        }
        sys::update_elem(fd.as_fd(), &i.to_ne_bytes(), &value, 0)?;
    }
    // The production path: flows + mmapped per-CPU slots.
    let (_ebpf, mut maps) = attach::load(N, None)?;
    maps.add_flows(&specs(N, false))?;

    let merge = |bytes: &[u8]| -> stats::StreamSummary {
        let slots: Vec<StreamStats> = (0..ncpus)
            .map(|c| sys::read_pod::<StreamStats>(&bytes[c * stride..]))
            .collect();
        stats::merge(&slots)
    };
    let best = |f: &mut dyn FnMut() -> anyhow::Result<u64>| -> anyhow::Result<(f64, u64)> {
        let mut best = f64::MAX;
        let mut check = 0;
        for _ in 0..rounds {
            let t = Instant::now();
            check = f()?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok((best, check))
    };

    let mut buf = vec![0u8; stride * ncpus];
    let (per_key, n1) = best(&mut || {
        let mut total = 0;
        for i in 0..N {
            if sys::lookup_elem(fd.as_fd(), &i.to_ne_bytes(), &mut buf)? {
                total += merge(&buf).packets;
            }
        }
        Ok(total)
    })?;
    let mut reader = BatchReader::new(4, size, Some(ncpus), 4096);
    let mut calls = 0;
    let (batch, n2) = best(&mut || {
        let mut total = 0;
        reader.read_all(fd.as_fd(), |_, v| total += merge(v).packets)?;
        calls = reader.last_calls;
        Ok(total)
    })?;
    assert_eq!(n1, n2, "per-key and batch read-outs disagree");
    let (mmap_only, _) = best(&mut || {
        let mut total = 0;
        for slot in 0..N {
            total += merge(maps.stream_slots(slot)).packets;
        }
        Ok(total)
    })?;
    let (mmap_full, rows) = best(&mut || Ok(maps.streams()?.len() as u64))?;
    let ms = |s: f64| s * 1e3;
    println!("{:<44} {:>10}", "method", "ms");
    println!(
        "{:<44} {:>10.2}",
        format!("per-key BPF_MAP_LOOKUP_ELEM ({N} syscalls)"),
        ms(per_key)
    );
    println!(
        "{:<44} {:>10.2}",
        format!("BPF_MAP_LOOKUP_BATCH ({calls} syscalls)"),
        ms(batch)
    );
    println!(
        "{:<44} {:>10.2}",
        "mmap of per-CPU slots (0 syscalls)",
        ms(mmap_only)
    );
    println!(
        "{:<44} {:>10.2}",
        format!("streams(): flow table batch + mmap ({rows} rows)"),
        ms(mmap_full)
    );
    println!(
        "ratio per-key / batch: {:.1}x (goal >= 3x)",
        per_key / batch
    );
    println!(
        "ratio batch / mmap:    {:.1}x (goal >= 20x)",
        batch / mmap_only
    );
    Ok(())
}
