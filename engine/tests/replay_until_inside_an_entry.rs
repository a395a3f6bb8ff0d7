//! `audit replay --until T` and the read model's balance as of `T` are two answers to one
//! auditor's question, so they must agree at every moment, including moments inside a log
//! entry: item `i` of an entry happened at the entry's time + `i`, for transfers and for the
//! TC/C credits and refunds of a messages entry alike.

use engine::audit;
use engine::command::{NewAccount, NewTransfer};
use engine::model::Currency;
use engine::read_model::{At, QueryError};
use engine::runtime::{EngineConfig, Node};
use engine::ResultCode;
use std::collections::BTreeSet;

mod node_support;
use node_support::wait_tcc_settled;

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    futures::executor::block_on(f)
}

#[test]
fn replay_until_and_balance_at_agree_at_every_moment_inside_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.cores = vec![0];
    config.partitions = 2;
    config.read_model_history_per_account = 64;
    let node = Node::start(config).unwrap();
    let eur = Currency::parse("EUR").unwrap();
    // Two accounts in each partition; the first of each is an issuer.
    let mut by_partition = [Vec::new(), Vec::new()];
    for id in 1u128.. {
        let p = node.partition_of(id) as usize;
        if by_partition[p].len() < 2 {
            by_partition[p].push(id);
        }
        if by_partition.iter().all(|ids| ids.len() == 2) {
            break;
        }
    }
    let accounts: Vec<u128> = by_partition.iter().flatten().copied().collect();
    let created = block(
        node.create_accounts(
            &accounts
                .iter()
                .map(|&id| NewAccount {
                    id,
                    currency: eur,
                    flags: 0,
                    floor: if by_partition.iter().any(|ids| ids[0] == id) {
                        -1_000_000
                    } else {
                        0
                    },
                    user_data: 0,
                })
                .collect::<Vec<_>>(),
        ),
    )
    .unwrap();
    assert!(created.iter().all(|c| *c == ResultCode::Ok));
    // One entry of five local transfers (times t..t+4), then five cross-partition ones, whose
    // credits land in one messages entry of the other partition; one of those five is
    // refused at the destination (an unknown account) and refunded.
    let transfer = |id: u128, to: u128, amount: u64| NewTransfer {
        id,
        from: by_partition[0][0],
        to,
        amount,
        currency: eur,
        user_data: 0,
    };
    let local: Vec<NewTransfer> = (0..5)
        .map(|i| transfer(10 + i, by_partition[0][1], 10 + i as u64))
        .collect();
    assert!(block(node.create_transfers(&local))
        .unwrap()
        .iter()
        .all(|c| *c == ResultCode::Ok));
    let unknown = (1000u128..).find(|id| node.partition_of(*id) == 1).unwrap();
    let mut cross: Vec<NewTransfer> = (0..4)
        .map(|i| transfer(20 + i, by_partition[1][1], 100 + i as u64))
        .collect();
    cross.push(transfer(30, unknown, 7));
    let codes = block(node.create_transfers(&cross)).unwrap();
    assert_eq!(&codes[..4], &[ResultCode::Ok; 4]);
    assert_eq!(codes[4], ResultCode::ToAccountNotFound);
    wait_tcc_settled(&node, std::time::Duration::from_secs(10));

    // Every moment around and inside every entry.
    let mut moments = BTreeSet::new();
    audit::visit_records(dir.path(), |_, record| {
        let t = record.header.timestamp;
        moments.extend(t.saturating_sub(1)..=t + 6);
    })
    .unwrap();
    let answers: Vec<(u64, Vec<Option<i64>>)> = moments
        .iter()
        .map(|&t| {
            let balances = accounts
                .iter()
                .map(
                    |&id| match block(node.balance_at(id, At::Timestamp(t))).unwrap() {
                        Ok(b) => Some(b.balance),
                        Err(QueryError::NotCreatedYet { .. }) => None,
                        Err(e) => panic!("balance of {id} at {t}: {e}"),
                    },
                )
                .collect();
            (t, balances)
        })
        .collect();
    node.shutdown().unwrap();

    // Moments that cut the local entry (the wallet had 1..4 of its 5 credits: 0 < balance <
    // 60) and the messages entry (1..3 of 4 credits: 0 < balance < 406).
    let (mut inside_local, mut inside_credits) = (0, 0);
    for (t, read_model) in &answers {
        let replay = audit::replay(dir.path(), Some(*t), true).unwrap();
        let replayed: Vec<Option<i64>> = accounts
            .iter()
            .map(|&id| {
                replay
                    .states
                    .iter()
                    .find_map(|s| s.account(id))
                    .map(|a| a.balance)
            })
            .collect();
        assert_eq!(
            &replayed, read_model,
            "at {t}: replay --until against balance as of (accounts {accounts:?})"
        );
        inside_local += matches!(read_model[1], Some(b) if b > 0 && b < 60) as u32;
        inside_credits += matches!(read_model[3], Some(b) if b > 0 && b < 406) as u32;
    }
    assert!(
        inside_local >= 4 && inside_credits >= 3,
        "the moments did not cut the entries: {inside_local} local, {inside_credits} credits"
    );
}
