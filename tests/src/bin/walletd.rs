//! The real `walletd` (from walletd-tools), built here so cross-process tests can start it
//! through `CARGO_BIN_EXE_test-walletd`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    walletd_tools::walletd::main();
}
