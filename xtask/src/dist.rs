//! Edge builds: `cargo xtask dist` (static musl release binaries and a
//! tarball per target) and `cargo xtask cross-test` (the binaries and the
//! unit tests of the pure-logic crates run under qemu-user).
//!
//! Cross builds use Zig as the linker (`cargo zigbuild`; scripts/setup.sh
//! installs cargo-zigbuild and the `ziglang` package into a Python venv
//! under /opt/gateway-zig, override with GATEWAY_ZIG_VENV). LoongArch has
//! no prebuilt std for the pinned toolchain, so std is built from rust-src
//! there (`-Z build-std`, with RUSTC_BOOTSTRAP=1 for that cargo process
//! only). The eBPF object is the same for every target: gateway/build.rs
//! builds it on the host for bpfel-unknown-none and embeds it.

use std::{
    collections::BTreeSet,
    ffi::OsString,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, ensure, Context as _, Result};

/// One edge target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// Short name, used in tarball names.
    pub arch: &'static str,
    pub triple: &'static str,
    /// qemu-user binary that runs it on this (x86_64) host; None: native.
    pub qemu: Option<&'static str>,
    /// std is not downloadable for this target: build it from rust-src.
    pub build_std: bool,
    /// ELF e_machine of its binaries.
    pub elf_machine: u16,
}

pub const TARGETS: &[Target] = &[
    Target {
        arch: "x86_64",
        triple: "x86_64-unknown-linux-musl",
        qemu: None,
        build_std: false,
        elf_machine: 62,
    },
    Target {
        arch: "aarch64",
        triple: "aarch64-unknown-linux-musl",
        qemu: Some("qemu-aarch64"),
        build_std: false,
        elf_machine: 183,
    },
    Target {
        arch: "loongarch64",
        triple: "loongarch64-unknown-linux-musl",
        qemu: Some("qemu-loongarch64"),
        build_std: true,
        elf_machine: 258,
    },
];

/// Crates whose unit tests `cross-test` runs under emulation: the pure
/// logic without kernel or network access (SIP, MANSCDP, SDP; RTP, PS;
/// SM4 and SM3 with their SIMD paths; the per-CPU statistics merge). Add a crate here to cover it; a
/// name that is not a workspace member is skipped with a note.
pub const CROSS_TEST_CRATES: &[&str] = &[
    "gb28181",
    "gb28181-media",
    "gb35114",
    "gmcrypt",
    "gateway-common",
];

/// The binaries in a bundle.
const BINS: &[&str] = &["gateway", "gb-sim"];

/// Parses `--target` values: short names, full triples, `all`, and
/// comma-separated lists of them.
pub fn parse_targets(values: &[String]) -> Result<Vec<Target>> {
    let mut out = BTreeSet::new();
    for v in values.iter().flat_map(|v| v.split(',')) {
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        if v == "all" {
            out.extend(TARGETS.iter().copied());
            continue;
        }
        let t = TARGETS
            .iter()
            .find(|t| t.arch == v || t.triple == v)
            .with_context(|| {
                format!(
                    "unknown target {v:?}: use {} (or a full triple: {}), or all",
                    TARGETS
                        .iter()
                        .map(|t| t.arch)
                        .collect::<Vec<_>>()
                        .join(", "),
                    TARGETS
                        .iter()
                        .map(|t| t.triple)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        out.insert(*t);
    }
    ensure!(!out.is_empty(), "no target given (--target aarch64, ...)");
    // Stable order: as listed in TARGETS.
    let mut v: Vec<Target> = out.into_iter().collect();
    v.sort_by_key(|t| TARGETS.iter().position(|x| x == t));
    Ok(v)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cargo target directory: $CARGO_TARGET_DIR, else the workspace's.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                std::env::current_dir().map(|c| c.join(&d)).unwrap_or(d)
            }
        }
        _ => root().join("target"),
    }
}

/// PATH with the Zig venv's bin directory first, so that `cargo zigbuild`
/// finds cargo-zigbuild and `python3 -m ziglang` (its Zig) without any
/// activation.
fn zig_path() -> Result<OsString> {
    let venv = std::env::var_os("GATEWAY_ZIG_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/gateway-zig"));
    let mut dirs = vec![venv.join("bin")];
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    let found = dirs.iter().any(|d| d.join("cargo-zigbuild").is_file());
    ensure!(
        found,
        "cargo-zigbuild not found (in {} or PATH): run scripts/setup.sh",
        venv.join("bin").display()
    );
    Ok(std::env::join_paths(dirs)?)
}

/// `cargo zigbuild` for `t` with `args`; LoongArch builds std from source.
pub(crate) fn zigbuild(t: &Target, args: &[&str]) -> Result<Command> {
    let mut c = Command::new(env!("CARGO"));
    c.current_dir(root())
        .env("PATH", zig_path()?)
        .env("CARGO_TARGET_DIR", target_dir())
        .args(["zigbuild", "--locked", "--target", t.triple])
        .args(args);
    if t.build_std {
        // Only this cargo process tree may use the unstable flag. The
        // linker then warns, for every binary, that the target's prebuilt
        // library directory (which rustup does not have) is missing:
        // harmless, and silenced for this target only.
        c.env("RUSTC_BOOTSTRAP", "1")
            .args(["-Z", "build-std=std,panic_abort"])
            .args([
                "--config",
                &format!("target.{}.rustflags=[\"-Alinker_messages\"]", t.triple),
            ]);
    }
    Ok(c)
}

pub(crate) fn run(mut c: Command, what: &str) -> Result<()> {
    eprintln!("+ {what}");
    let st = c.status().with_context(|| format!("running {what}"))?;
    ensure!(st.success(), "{what} failed");
    Ok(())
}

/// Builds the static release binaries of `t`; returns their paths.
pub(crate) fn build_release(t: &Target) -> Result<Vec<PathBuf>> {
    let mut args = vec!["--release"];
    for b in BINS {
        args.extend(["--bin", b]);
    }
    // Symbols stripped at link time. Given as --config, so it applies to
    // this cargo only, not to the eBPF build that gateway/build.rs starts
    // (which needs its symbols).
    args.extend(["--config", "profile.release.strip=\"symbols\""]);
    let c = zigbuild(t, &args)?;
    run(
        c,
        &format!(
            "cargo zigbuild --release --target {} (gateway, gb-sim)",
            t.triple
        ),
    )?;
    let dir = target_dir().join(t.triple).join("release");
    let mut out = Vec::new();
    for b in BINS {
        let p = dir.join(b);
        let elf = Elf::read(&p)?;
        ensure!(
            elf.machine == t.elf_machine,
            "{}: ELF machine {} is not {} ({})",
            p.display(),
            elf.machine,
            t.elf_machine,
            t.arch
        );
        ensure!(
            !elf.has_interp,
            "{} is dynamically linked (has PT_INTERP)",
            p.display()
        );
        ensure!(
            !elf.has_symtab,
            "{} still has a symbol table (.symtab)",
            p.display()
        );
        out.push(p);
    }
    Ok(out)
}

/// Runs a target binary natively or under its qemu-user.
pub(crate) fn target_cmd(t: &Target, exe: &Path) -> Result<Command> {
    Ok(match t.qemu {
        None => Command::new(exe),
        Some(q) => {
            ensure!(
                which(q).is_some(),
                "{q} not found: run scripts/setup.sh (qemu-user from bookworm-backports)"
            );
            let mut c = Command::new(q);
            c.arg(exe);
            c
        }
    })
}

pub(crate) fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(prog))
            .find(|p| p.is_file())
    })
}

/// `cargo xtask dist`: per target, the binaries and
/// target/dist/gateway-<version>-<arch>.tar.gz.
pub fn dist(targets: &[Target]) -> Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let out_dir = target_dir().join("dist");
    std::fs::create_dir_all(&out_dir)?;
    let mut summary = Vec::new();
    for t in targets {
        let t0 = Instant::now();
        let bins = build_release(t)?;
        let name = format!("gateway-{version}-{}", t.arch);
        let stage = out_dir.join(&name);
        if stage.exists() {
            std::fs::remove_dir_all(&stage)?;
        }
        std::fs::create_dir_all(&stage)?;
        let mut sizes = Vec::new();
        for b in &bins {
            let file = b.file_name().context("binary name")?;
            let dst = stage.join(file);
            std::fs::copy(b, &dst)
                .with_context(|| format!("copying {} to {}", b.display(), dst.display()))?;
            sizes.push((
                file.to_string_lossy().into_owned(),
                std::fs::metadata(&dst)?.len(),
            ));
        }
        stage_files(&stage)?;
        // The packed gateway must report this version (when it can run here).
        let gw = stage.join("gateway");
        if t.qemu.is_none_or(|q| which(q).is_some()) {
            let o = target_cmd(t, &gw)?.arg("--version").output()?;
            let v = String::from_utf8_lossy(&o.stdout);
            ensure!(
                o.status.success() && v.trim() == format!("gateway {version}"),
                "{} --version printed {:?}",
                gw.display(),
                v.trim()
            );
        }
        let tarball = out_dir.join(format!("{name}.tar.gz"));
        tar(&out_dir, &name, &tarball)?;
        let tsize = std::fs::metadata(&tarball)?.len();
        for (b, s) in &sizes {
            println!("{:<12} {b:<8} {:>10} bytes ({})", t.arch, s, mib(*s));
        }
        println!(
            "{:<12} {:<8} {:>10} bytes ({}): {}",
            t.arch,
            "tarball",
            tsize,
            mib(tsize),
            tarball.display()
        );
        summary.push((t.arch, sizes, tsize, t0.elapsed()));
    }
    println!("\ndist summary (static musl, stripped):");
    for (arch, sizes, tsize, took) in summary {
        let s: Vec<String> = sizes
            .iter()
            .map(|(b, s)| format!("{b} {}", mib(*s)))
            .collect();
        println!(
            "  {arch:<12} {}, tarball {} ({:.0} s)",
            s.join(", "),
            mib(tsize),
            took.as_secs_f64()
        );
    }
    Ok(())
}

fn mib(n: u64) -> String {
    format!("{:.2} MiB", n as f64 / (1024.0 * 1024.0))
}

/// Copies the packaging files into the staging directory.
fn stage_files(stage: &Path) -> Result<()> {
    let root = root();
    for (src, dst) in [
        ("dist/gateway.service", "gateway.service"),
        ("dist/gateway.toml", "gateway.toml"),
        ("dist/INSTALL.md", "INSTALL.md"),
        ("README.md", "README.md"),
        ("simulator/README.md", "simulator/README.md"),
    ] {
        let s = root.join(src);
        let d = stage.join(dst);
        if let Some(p) = d.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::copy(&s, &d).with_context(|| format!("copying {}", s.display()))?;
    }
    // Every document the README links to.
    copy_dir(&root.join("docs"), &stage.join("docs"))?;
    copy_dir(&root.join("dashboards"), &stage.join("dashboards"))
}

fn copy_dir(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            copy_dir(&p, &dst.join(e.file_name()))?;
        } else {
            std::fs::copy(&p, dst.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// A reproducible tar.gz of `dir/name` (GNU tar: sorted, root-owned,
/// fixed time).
fn tar(dir: &Path, name: &str, out: &Path) -> Result<()> {
    let mtime = std::env::var("SOURCE_DATE_EPOCH").unwrap_or_else(|_| "0".into());
    let mut c = Command::new("tar");
    c.current_dir(dir)
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            &format!("--mtime=@{mtime}"),
            // -n: no name or time stamp in the gzip header.
            "--use-compress-program=gzip -n",
            "-cf",
        ])
        .arg(out)
        .arg(name);
    run(c, &format!("tar -czf {}", out.display()))
}

/// The few ELF facts the bundle is checked for.
#[derive(Debug, PartialEq, Eq)]
pub struct Elf {
    pub machine: u16,
    /// A PT_INTERP program header: needs a dynamic loader.
    pub has_interp: bool,
    /// A .symtab section: not stripped.
    pub has_symtab: bool,
}

impl Elf {
    pub fn read(path: &Path) -> Result<Elf> {
        let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Elf::parse(&b)
            .with_context(|| format!("{}: not a 64-bit little-endian ELF", path.display()))
    }

    /// Parses a 64-bit little-endian ELF image.
    pub fn parse(b: &[u8]) -> Option<Elf> {
        let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
        let u32_at = |o: usize| {
            b.get(o..o + 4)
                .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        };
        let u64_at = |o: usize| {
            b.get(o..o + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_le_bytes)
        };
        if b.get(0..4)? != b"\x7fELF" || *b.get(4)? != 2 || *b.get(5)? != 1 {
            return None;
        }
        let machine = u16_at(18)?;
        let phoff = usize::try_from(u64_at(32)?).ok()?;
        let shoff = usize::try_from(u64_at(40)?).ok()?;
        let phentsize = u16_at(54)? as usize;
        let phnum = u16_at(56)? as usize;
        let shentsize = u16_at(58)? as usize;
        let shnum = u16_at(60)? as usize;
        let mut has_interp = false;
        for i in 0..phnum {
            // PT_INTERP = 3
            if u32_at(phoff.checked_add(i.checked_mul(phentsize)?)?)? == 3 {
                has_interp = true;
            }
        }
        let mut has_symtab = false;
        for i in 0..shnum {
            // SHT_SYMTAB = 2
            if u32_at(
                shoff
                    .checked_add(i.checked_mul(shentsize)?)?
                    .checked_add(4)?,
            )? == 2
            {
                has_symtab = true;
            }
        }
        Some(Elf {
            machine,
            has_interp,
            has_symtab,
        })
    }
}

/// A test executable cargo built.
struct TestExe {
    package: String,
    /// Directory of the package's Cargo.toml (cargo test runs tests there).
    dir: PathBuf,
    exe: PathBuf,
}

fn workspace_members() -> Result<BTreeSet<String>> {
    let o = Command::new(env!("CARGO"))
        .current_dir(root())
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo metadata")?;
    ensure!(o.status.success(), "cargo metadata failed");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    Ok(v["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect())
}

/// Builds the unit (and integration) test executables of `crates` for `t`.
fn build_tests(t: &Target, crates: &[&str]) -> Result<Vec<TestExe>> {
    let mut args = vec!["--tests", "--message-format=json-render-diagnostics"];
    for c in crates {
        args.extend(["-p", c]);
    }
    let mut c = zigbuild(t, &args)?;
    eprintln!(
        "+ cargo zigbuild --tests --target {} -p {}",
        t.triple,
        crates.join(" -p ")
    );
    let mut child = c
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo zigbuild")?;
    let mut exes = Vec::new();
    for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
        let line = line?;
        let Ok(m) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if m["reason"] != "compiler-artifact" || m["profile"]["test"] != true {
            continue;
        }
        let (Some(exe), Some(manifest)) = (m["executable"].as_str(), m["manifest_path"].as_str())
        else {
            continue;
        };
        let package = package_name(m["package_id"].as_str().unwrap_or("?"));
        exes.push(TestExe {
            package,
            dir: Path::new(manifest)
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(root),
            exe: PathBuf::from(exe),
        });
    }
    ensure!(
        child.wait()?.success(),
        "building the tests for {} failed",
        t.triple
    );
    Ok(exes)
}

/// The package name in a cargo package id (`path+file:///w/media#gb28181-media@0.1.0`
/// or `path+file:///w/gb28181#0.1.0`).
fn package_name(id: &str) -> String {
    let (path, frag) = id.rsplit_once('#').unwrap_or((id, ""));
    match frag.split_once('@') {
        Some((name, _)) => name.to_string(),
        None => path.rsplit('/').next().unwrap_or(id).to_string(),
    }
}

/// Sums `test result:` lines of libtest output.
pub(crate) fn count_results(out: &str) -> (u64, u64) {
    let (mut passed, mut failed) = (0, 0);
    for line in out.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        for part in rest.split(['.', ';']) {
            let mut w = part.split_whitespace();
            if let (Some(n), Some(kind)) = (w.next().and_then(|n| n.parse::<u64>().ok()), w.next())
            {
                match kind {
                    "passed" => passed += n,
                    "failed" => failed += n,
                    _ => {}
                }
            }
        }
    }
    (passed, failed)
}

/// `cargo xtask cross-test`: per target, the release binaries under
/// qemu-user (--version, --help, `gateway check`), then the unit tests of
/// CROSS_TEST_CRATES built for the target and run under qemu-user.
pub fn cross_test(targets: &[Target]) -> Result<()> {
    let members = workspace_members()?;
    let crates: Vec<&str> = CROSS_TEST_CRATES
        .iter()
        .copied()
        .filter(|c| {
            let m = members.contains(*c);
            if !m {
                eprintln!("cross-test: {c} is not a workspace member; skipped");
            }
            m
        })
        .collect();
    ensure!(!crates.is_empty(), "no crate to cross-test");
    let version = env!("CARGO_PKG_VERSION");
    let (mut passed, mut failed) = (0u64, 0u64);
    let mut lines = Vec::new();
    for t in targets {
        let t0 = Instant::now();
        // 1. The binaries.
        let bins = build_release(t)?;
        let (mut p, mut f) = (0u64, 0u64);
        for b in &bins {
            let name = b.file_name().and_then(|n| n.to_str()).unwrap_or("?");
            for arg in ["--version", "--help"] {
                let o = target_cmd(t, b)?.arg(arg).output()?;
                let out = String::from_utf8_lossy(&o.stdout);
                let good = o.status.success()
                    && if arg == "--version" {
                        out.trim() == format!("{name} {version}")
                    } else {
                        out.contains("Usage:")
                    };
                println!(
                    "{} {name} {arg}: {}",
                    t.arch,
                    if good { "ok" } else { "FAILED" }
                );
                if good {
                    p += 1;
                } else {
                    eprintln!("{}", String::from_utf8_lossy(&o.stderr));
                    f += 1;
                }
            }
        }
        // `gateway check` runs and explains itself (under qemu-user the
        // bpf(2) call is not passed through: it must say so).
        if let Some(gw) = bins.iter().find(|b| b.ends_with("gateway")) {
            let o = target_cmd(t, gw)?.args(["check", "--json"]).output()?;
            let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            let sys = r["checks"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["id"] == "bpf_syscall")
                .cloned()
                .unwrap_or_default();
            let consistent = r["ok"].is_boolean()
                && (o.status.code() == Some(0)) == (r["ok"] == true)
                && (t.qemu.is_none()
                    || sys["status"] == "ok"
                    || sys["detail"].as_str().is_some_and(|d| {
                        d.contains("Function not implemented") && d.contains("qemu-user")
                    }));
            println!(
                "{} gateway check --json: {} (exit {:?}; bpf(2): {} {})",
                t.arch,
                if consistent { "ok" } else { "FAILED" },
                o.status.code(),
                sys["status"].as_str().unwrap_or("?"),
                sys["detail"].as_str().unwrap_or("")
            );
            if consistent {
                p += 1;
            } else {
                eprintln!("{}", String::from_utf8_lossy(&o.stderr));
                f += 1;
            }
        }
        // 2. The unit tests of the pure-logic crates.
        for e in build_tests(t, &crates)? {
            // gmcrypt's SIMD paths: on aarch64 once with every extension
            // qemu emulates (SM3/SM4 instructions) and once on a core
            // without them (NEON only), printing which paths were skipped.
            let simd = e.package == "gmcrypt";
            let cpus: &[Option<&str>] = if simd && t.arch == "aarch64" {
                &[Some("max"), Some("cortex-a72")]
            } else {
                &[None]
            };
            for cpu in cpus {
                let mut cmd = target_cmd(t, &e.exe)?;
                cmd.current_dir(&e.dir);
                if let Some(c) = cpu {
                    cmd.env("QEMU_CPU", c);
                }
                if simd {
                    cmd.arg("--show-output");
                }
                let o = cmd
                    .output()
                    .with_context(|| format!("running {}", e.exe.display()))?;
                let out = String::from_utf8_lossy(&o.stdout);
                let (tp, tf) = count_results(&out);
                let ok = o.status.success() && tf == 0;
                println!(
                    "{} {} ({}{}): {tp} passed, {tf} failed{}",
                    t.arch,
                    e.package,
                    e.exe.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
                    cpu.map(|c| format!(", qemu -cpu {c}")).unwrap_or_default(),
                    if ok { "" } else { " FAILED" }
                );
                let mut skipped: Vec<&str> =
                    out.lines().filter(|l| l.starts_with("skipped:")).collect();
                skipped.sort_unstable();
                skipped.dedup();
                for l in skipped {
                    println!("  {l}");
                }
                if !ok {
                    print!("{out}");
                    eprintln!("{}", String::from_utf8_lossy(&o.stderr));
                    f += tf.max(1);
                }
                p += tp;
            }
        }
        lines.push(format!(
            "{}: {p} passed, {f} failed ({:.0} s)",
            t.arch,
            t0.elapsed().as_secs_f64()
        ));
        passed += p;
        failed += f;
    }
    for l in &lines {
        println!("cross-test {l}");
    }
    println!("cross-test: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("cross tests failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_by_name_triple_list_and_all() {
        let names = |v: &[&str]| -> Vec<&str> {
            parse_targets(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap()
                .iter()
                .map(|t| t.arch)
                .collect()
        };
        assert_eq!(names(&["aarch64"]), ["aarch64"]);
        assert_eq!(names(&["loongarch64-unknown-linux-musl"]), ["loongarch64"]);
        assert_eq!(
            names(&["loongarch64,aarch64", "aarch64"]),
            ["aarch64", "loongarch64"]
        );
        assert_eq!(names(&["all"]), ["x86_64", "aarch64", "loongarch64"]);
        let err = parse_targets(&["armv7".into()]).unwrap_err().to_string();
        assert!(
            err.contains("unknown target") && err.contains("aarch64"),
            "{err}"
        );
        assert!(parse_targets(&[]).is_err());
    }

    #[test]
    fn elf_facts() {
        // A minimal ELF64 LE header with one PT_INTERP program header and
        // one SHT_SYMTAB section header.
        let mut b = vec![0u8; 64 + 56 + 64];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[18..20].copy_from_slice(&183u16.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        b[40..48].copy_from_slice(&120u64.to_le_bytes()); // shoff
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        b[58..60].copy_from_slice(&64u16.to_le_bytes());
        b[60..62].copy_from_slice(&1u16.to_le_bytes());
        b[64..68].copy_from_slice(&3u32.to_le_bytes());
        b[124..128].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(
            Elf::parse(&b),
            Some(Elf {
                machine: 183,
                has_interp: true,
                has_symtab: true
            })
        );
        b[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        b[124..128].copy_from_slice(&3u32.to_le_bytes()); // SHT_STRTAB
        let e = Elf::parse(&b).unwrap();
        assert!(!e.has_interp && !e.has_symtab);
        // Truncated or not ELF.
        assert_eq!(Elf::parse(&b[..100]), None);
        assert_eq!(Elf::parse(b"MZ\0\0"), None);
    }

    #[test]
    fn package_names_from_ids() {
        assert_eq!(
            package_name("path+file:///w/media#gb28181-media@0.1.0"),
            "gb28181-media"
        );
        assert_eq!(package_name("path+file:///w/gb28181#0.1.0"), "gb28181");
    }

    #[test]
    fn libtest_summaries_are_summed() {
        let out = "test a ... ok\n\ntest result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.1s\n\ntest result: FAILED. 2 passed; 3 failed; 0 ignored\n";
        assert_eq!(count_results(out), (7, 3));
    }
}
