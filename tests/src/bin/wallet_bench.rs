//! The real `wallet-bench`, built here so cross-process tests can run it through
//! `CARGO_BIN_EXE_test-wallet-bench` (with `--walletd` pointing at `test-walletd`).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    wallet_bench::main();
}
