//! Exports step 9's two functions from the linked object, which makes their BTF linkage global:
//! the verifier then checks each once on its own (see `src/policy.rs`). Everything not exported
//! is internalised by bpf-linker.
fn main() {
    println!("cargo:rustc-link-arg-bins=--export=zt_evaluate_v4,zt_evaluate_v6");
}
