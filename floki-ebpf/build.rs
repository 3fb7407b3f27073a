//! Rebuild the kernel object when bpf-linker changes: the crate has an undeclared
//! dependency on that binary (aya-template does the same).
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!(
            "cargo:warning=bpf-linker not found ({err}); run `cargo xtask build-ebpf`, which installs it"
        ),
    }
}
