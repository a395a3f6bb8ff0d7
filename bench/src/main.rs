//! The `wallet-bench` binary; the program is the library's `main` (`src/lib.rs`).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    wallet_bench::main();
}
