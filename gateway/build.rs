//! Builds the kernel programs (`gateway-ebpf`) for bpfel-unknown-none with
//! the toolchain pinned in rust-toolchain.toml, so that one `cargo build`
//! yields a binary with the eBPF object embedded.
//!
//! The eBPF target needs `core` built from source (`-Z build-std=core`).
//! RUSTC_BOOTSTRAP=1 is set in this build script's own environment only, so
//! just the child eBPF build may use that unstable flag; the rest of the
//! workspace builds as plain stable.

use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?;
    let toolchain_file = root.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", toolchain_file.display());
    let text = std::fs::read_to_string(&toolchain_file)
        .with_context(|| format!("reading {}", toolchain_file.display()))?;
    let channel = text
        .lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("channel").map(|rest| {
                rest.trim_start_matches([' ', '='])
                    .trim()
                    .trim_matches('"')
                    .to_string()
            })
        })
        .ok_or_else(|| anyhow!("no channel in rust-toolchain.toml"))?;

    // SAFETY: build scripts are single-threaded at this point; the variable
    // only affects the child cargo that aya-build spawns.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("RUSTC_BOOTSTRAP", "1")
    };
    let ebpf_dir = root.join("gateway-ebpf");
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gateway-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&channel),
    )
}
