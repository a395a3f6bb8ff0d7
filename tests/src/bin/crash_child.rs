//! A process that appends transfers until it is killed. Usage:
//! `crash-child DATA_DIR FIRST_ID SEED`. After each durable acknowledgement it prints
//! `ACK <first id> <count> <ok count>` (line-buffered), so the parent knows exactly what was
//! acknowledged before its SIGKILL.

use engine::runtime::{EngineConfig, Node};
use engine::ResultCode;
use walletd_tests::{batch, creations, funding, PARTITIONS};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: crash-child DATA_DIR FIRST_ID SEED");
        std::process::exit(2);
    }
    let first_id: u128 = args[2].parse().expect("FIRST_ID is a number");
    let seed: u64 = args[3].parse().expect("SEED is a number");
    let mut config = EngineConfig::new(&args[1]);
    config.cores = vec![0, 1];
    config.partitions = PARTITIONS;
    config.segment_bytes = 4 << 20;
    config.snapshot_interval_entries = 50;
    let node = match Node::start(config) {
        Ok(node) => node,
        Err(e) => {
            eprintln!("crash-child: {e}");
            std::process::exit(1);
        }
    };
    let results =
        futures::executor::block_on(node.create_accounts(&creations())).expect("node is up");
    assert!(results
        .iter()
        .all(|c| matches!(c, ResultCode::Ok | ResultCode::Exists)));
    let results =
        futures::executor::block_on(node.create_transfers(&funding())).expect("node is up");
    assert!(
        results
            .iter()
            .all(|c| matches!(c, ResultCode::Ok | ResultCode::Exists)),
        "{results:?}"
    );
    println!("READY");
    let mut id = first_id;
    let mut n = 0u64;
    loop {
        let size = 1 + (n as usize * 37) % 300;
        let transfers = batch(id, size, seed.wrapping_add(n));
        let results =
            futures::executor::block_on(node.create_transfers(&transfers)).expect("node is up");
        let ok = results.iter().filter(|c| **c == ResultCode::Ok).count();
        println!("ACK {id} {size} {ok}");
        id += size as u128;
        n += 1;
    }
}
