//! See `walletd_tools::wallet`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    walletd_tools::wallet::main();
}
