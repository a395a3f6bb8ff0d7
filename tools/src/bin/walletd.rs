//! See `walletd_tools::walletd`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    walletd_tools::walletd::main();
}
