//! `wallet log verify` (`audit::verify`) finds damage no checksum shows: a log whose first
//! segments are gone (deleted, or left out of a copy) still has valid records and continuous
//! indexes from where it starts, but it no longer starts where it must.

use engine::audit::{self, AuditError};
use engine::command::{NewAccount, NewTransfer};
use engine::model::Currency;
use engine::recovery::{log_dir, partition_dir};
use engine::runtime::{EngineConfig, Node};
use engine::ResultCode;

#[test]
fn a_log_missing_its_first_segment_fails_verification() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.cores = vec![0];
    config.partitions = 1;
    config.segment_bytes = 4 << 20;
    let node = Node::start(config).unwrap();
    let eur = Currency::parse("EUR").unwrap();
    let accounts: Vec<NewAccount> = (1..=100)
        .map(|id| NewAccount {
            id,
            currency: eur,
            flags: 0,
            floor: if id == 1 { -1_000_000_000 } else { 0 },
            user_data: 0,
        })
        .collect();
    use futures::executor::block_on as block;
    assert!(block(node.create_accounts(&accounts))
        .unwrap()
        .iter()
        .all(|c| *c == ResultCode::Ok));
    // ~650 KB per batch: a dozen fill more than one 4 MiB segment.
    for b in 0..12u128 {
        let batch: Vec<NewTransfer> = (0..8190u128)
            .map(|i| NewTransfer {
                id: 1 + b * 8190 + i,
                from: 1,
                to: 2 + i % 99,
                amount: 1,
                currency: eur,
                user_data: 0,
            })
            .collect();
        assert!(block(node.create_transfers(&batch))
            .unwrap()
            .iter()
            .all(|c| *c == ResultCode::Ok));
    }
    node.shutdown().unwrap();

    let reports = audit::verify(dir.path()).expect("an intact log verifies");
    assert_eq!(reports[0].first_index, 1);
    let log = log_dir(&partition_dir(dir.path(), 0));
    let mut segments: Vec<_> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wlog"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 2, "{segments:?}");
    std::fs::remove_file(&segments[0]).unwrap();

    match audit::verify(dir.path()) {
        Err(AuditError::MissingStart {
            partition: 0,
            expected: 1,
            first,
        }) => assert!(first > 1),
        other => panic!("a log without its first segment: {other:?}"),
    }
}
