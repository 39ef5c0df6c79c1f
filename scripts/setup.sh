#!/usr/bin/env bash
# One-time (idempotent) set-up of a fresh Debian 12 machine for building and
# testing the gateway: Debian packages, the pinned Rust toolchain and a
# bpf-linker built against that toolchain's own LLVM.
#
# Usage: scripts/setup.sh            (as root; safe to run again)
#        SETUP_SKIP_APT=1 scripts/setup.sh   (toolchain only)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$here/rust-toolchain.toml")
bpf_linker_version=0.13.0
llvm_prefix=${GATEWAY_LLVM_PREFIX:-/opt/gateway-llvm}

log() { printf '[setup] %s\n' "$*" >&2; }

# --- Debian packages ------------------------------------------------------
apt_pkgs=(
  iproute2        # ip netns / veth for the namespace tests and the demo
  bpftool         # the namespace test checks that nothing stays attached
  ca-certificates
  sip-tester      # sipp: the third-party SIP peer of the signalling tests and benchmark
  ffmpeg          # ffmpeg/ffprobe: encode test media, validate recordings
  openssl         # SM4/SM3 reference the crypto tests and crypto-bench compare against
  prometheus      # a real Prometheus server and promtool for the metrics tests
  python3-venv    # edge builds: the venv for Zig and cargo-zigbuild
  systemd         # edge builds: systemd-analyze checks the shipped unit
  ethtool         # kernel relay test: full checksums from the camera's veth
  tshark          # kernel relay test: UDP checksums of relayed packets validated
  xz-utils        # vm-test: Debian's 6.12 kernel modules are .ko.xz
)
if [ "${SETUP_SKIP_APT:-0}" != 1 ]; then
  missing=()
  for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# --- Rust toolchain ---------------------------------------------------------
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1 \
   || ! rustup component list --toolchain "$toolchain" --installed 2>/dev/null | grep -q rust-src; then
  log "installing Rust $toolchain"
  rustup toolchain install "$toolchain" --profile minimal -c rust-src,clippy,rustfmt
fi

# --- bpf-linker against the toolchain's LLVM --------------------------------
sysroot=$(rustup run "$toolchain" rustc --print sysroot)
so_path=$(ls "$sysroot"/lib/libLLVM.so.* 2>/dev/null | head -n1 || true)
[ -n "$so_path" ] || { echo "setup: no libLLVM.so in $sysroot/lib" >&2; exit 1; }
so=$(basename "$so_path")
llvm_major=$(echo "$so" | sed -n 's/^libLLVM\.so\.\([0-9]*\).*/\1/p')
mkdir -p "$llvm_prefix/lib"
ln -sf "$sysroot/lib/$so" "$llvm_prefix/lib/libLLVM.so"
ln -sf "$sysroot/lib/$so" "$llvm_prefix/lib/$so"

cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
if ! "$cargo_bin/bpf-linker" --version 2>/dev/null | grep -q "$bpf_linker_version" \
   || ! "$cargo_bin/bpf-linker" --help >/dev/null 2>&1; then
  log "building bpf-linker $bpf_linker_version against LLVM $llvm_major ($so)"
  LLVM_PREFIX="$llvm_prefix" rustup run "$toolchain" cargo install bpf-linker \
    --version "$bpf_linker_version" --no-default-features --features "llvm-$llvm_major" --locked
fi
# --- cargo-fuzz for the parser fuzz targets (cargo xtask fuzz) ---------------
cargo_fuzz_version=0.13.2
if ! "$cargo_bin/cargo-fuzz" --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
  log "installing cargo-fuzz $cargo_fuzz_version"
  rustup run "$toolchain" cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked
fi
# --- Edge builds: cargo xtask dist / cross-test -----------------------------
# Static musl binaries for x86_64, aarch64 and loongarch64, linked with Zig
# through cargo-zigbuild (both from PyPI, in a venv of their own), and
# qemu-user to run the aarch64/loongarch64 ones here. LoongArch's std is
# built from rust-src by the xtask (rustup has no prebuilt one for it).
zig_venv=${GATEWAY_ZIG_VENV:-/opt/gateway-zig}
ziglang_version=0.17.0
cargo_zigbuild_version=0.24.0
cross_targets=(aarch64-unknown-linux-musl x86_64-unknown-linux-musl)
codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
if [ "${SETUP_SKIP_APT:-0}" != 1 ]; then
  # QEMU 10 runs LoongArch binaries that use LSX (Rust's default for the
  # target, and Zig's musl start-up code); bookworm's 7.2 does not.
  # qemu-system-aarch64 boots Debian's arm64 kernels for `cargo xtask
  # vm-test`; from the same suite, since 7.2's conflicts with qemu-user 10.
  if ! qemu-loongarch64 --version 2>/dev/null | grep -Eq 'version (1[0-9]|[2-9][0-9])\.' \
     || ! command -v qemu-aarch64 >/dev/null || ! command -v qemu-system-aarch64 >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    if [ "$codename" = bookworm ]; then
      if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
        mirror=${mirror:-http://deb.debian.org/debian}
        log "adding the bookworm-backports suite ($mirror)"
        printf '%s\n' 'Types: deb' "URIs: $mirror" 'Suites: bookworm-backports' 'Components: main' \
          'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
          > /etc/apt/sources.list.d/bookworm-backports.sources
      fi
      log "installing qemu-user and qemu-system-arm from bookworm-backports"
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-user qemu-system-arm >/dev/null
    else
      log "installing qemu-user and qemu-system-arm"
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends qemu-user qemu-system-arm >/dev/null
    fi
  fi
  # vm-test fetches arm64 kernels, busybox and a few tools with
  # `apt-get download`: apt needs the arm64 architecture in its lists.
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    log "adding the arm64 architecture to apt (vm-test downloads arm64 packages)"
    dpkg --add-architecture arm64
    apt-get update -qq
  fi
fi
installed_targets=$(rustup target list --toolchain "$toolchain" --installed 2>/dev/null || true)
for t in "${cross_targets[@]}"; do
  if ! grep -qx "$t" <<<"$installed_targets"; then
    log "adding Rust target $t"
    rustup target add --toolchain "$toolchain" "$t"
  fi
done
if ! "$zig_venv/bin/cargo-zigbuild" --version 2>/dev/null | grep -q "$cargo_zigbuild_version" \
   || [ "$("$zig_venv/bin/python3" -m ziglang version 2>/dev/null)" != "$ziglang_version" ]; then
  log "installing ziglang $ziglang_version and cargo-zigbuild $cargo_zigbuild_version into $zig_venv"
  [ -x "$zig_venv/bin/pip" ] || python3 -m venv "$zig_venv"
  "$zig_venv/bin/pip" install -q "ziglang==$ziglang_version" "cargo-zigbuild==$cargo_zigbuild_version"
fi
log "edge builds: $("$zig_venv/bin/cargo-zigbuild" --version), zig $("$zig_venv/bin/python3" -m ziglang version), $(qemu-aarch64 --version | head -n1)"

log "ready: $(rustup run "$toolchain" rustc --version); $("$cargo_bin/bpf-linker" --version); $(sipp -v 2>/dev/null | grep -o 'SIPp v[0-9.]*' | head -1)"
