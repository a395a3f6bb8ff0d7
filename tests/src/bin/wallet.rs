//! The real `wallet` (from walletd-tools), built here so cross-process tests can start it
//! through `CARGO_BIN_EXE_test-wallet`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    walletd_tools::wallet::main();
}
