//! Rebuild the object when the bpf-linker binary changes (it is an
//! undeclared dependency of the bpfel-unknown-none target).
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
