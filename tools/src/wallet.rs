//! `wallet`: the command-line client. Human output by default, one JSON object with `--json`;
//! exit status 1 (and a one-line reason on stderr) when the command did not succeed.

use clap::{Parser, Subcommand};
use engine::model::{account_flags, Currency};
use engine::read_model::At;
use engine::{NewAccount, NewTransfer, ResultCode};
use net::{AnyClient, Client, ClientConfig};
use serde_json::json;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "wallet", version, about = "walletd command-line client")]
struct Cli {
    #[arg(long, global = true, default_value = "127.0.0.1:7400")]
    addr: String,
    /// File holding the auth token the server expects.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Speak TLS, trusting the CA certificate(s) in this PEM file.
    #[arg(long, global = true, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the host of --addr).
    #[arg(long, global = true, value_name = "NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,
    #[arg(long, global = true)]
    json: bool,
    #[arg(long, global = true, default_value_t = 10_000)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an account (a negative --floor makes an issuer).
    CreateAccount {
        #[arg(long)]
        id: u128,
        #[arg(long)]
        currency: String,
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        floor: i64,
        #[arg(long)]
        frozen: bool,
        #[arg(long, default_value_t = 0)]
        user_data: u64,
    },
    /// Move money between two accounts, once per --id.
    Transfer {
        #[arg(long)]
        id: u128,
        #[arg(long)]
        from: u128,
        #[arg(long)]
        to: u128,
        #[arg(long)]
        amount: u64,
        #[arg(long)]
        currency: String,
        #[arg(long, default_value_t = 0)]
        user_data: u64,
    },
    /// Deposit: a transfer from an issuer account.
    Deposit {
        #[arg(long)]
        id: u128,
        #[arg(long)]
        issuer: u128,
        #[arg(long)]
        to: u128,
        #[arg(long)]
        amount: u64,
        #[arg(long)]
        currency: String,
    },
    /// Show an account's balance; with --at (or --at-position), as of that point (from the
    /// read model).
    Balance {
        id: u128,
        /// Timestamp (ns since the Unix epoch).
        #[arg(long, conflicts_with = "at_position")]
        at: Option<u64>,
        /// Read-model position (log entry << 16 | event ordinal).
        #[arg(long)]
        at_position: Option<u64>,
    },
    /// An account's history, newest first (from the read model).
    History {
        id: u128,
        /// Entries to print.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only entries older than this position (the `next_before` of a previous page).
        #[arg(long)]
        before: Option<u64>,
        /// Only entries at or after this timestamp (ns).
        #[arg(long)]
        from: Option<u64>,
        /// Only entries at or before this timestamp (ns).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Show a transfer.
    LookupTransfer { id: u128 },
    /// Money per currency (balance + held) in every partition of the node and in all of them
    /// together, from the read models (each partition as of its read position).
    Totals,
    /// Print changes of money as they become durable (JSON lines with --json); reconnects and
    /// resumes without gap or duplicate.
    Watch {
        /// Only this account's changes (default: every change of every partition).
        #[arg(long)]
        account: Option<u128>,
        /// Start at this position (inclusive; with several partitions, in each of them).
        /// Default: only new changes.
        #[arg(long)]
        from_position: Option<u64>,
        /// Stop after this many changes.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Node status: partitions and their log positions.
    Status,
    /// The live state digest (per partition and combined), comparable with `audit replay`'s.
    /// Each partition pauses while it hashes its state: for audits, not for monitoring.
    Digest,
    /// The cluster: who leads each partition, and how far each replica is behind.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Offline log tools on a data dir (no server needed).
    #[command(subcommand)]
    Log(LogCommand),
    /// Offline audit: rebuild state from the log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Per partition: leader and term from the partition map, every node's durable log
    /// index with its lag behind the leader, and from the leader itself the commit index and
    /// each follower's matched index and lag (entries behind the leader's log).
    Status,
    /// Move each partition's leadership back to its preferred node (partition p: the
    /// (p % nodes)-th node in id order, as `init` spreads them) where a failover left another
    /// node leading: the preferred node campaigns (and wins if its log is up to date). Waits
    /// until every partition is led by its preferred node or the timeout passed; fails if one
    /// is not. Reports per partition: preferred node, leader before, leader after.
    BalanceLeaders {
        /// How long to keep trying, in seconds.
        #[arg(long, default_value_t = 10)]
        timeout_secs: u64,
    },
    /// Make every partition of a fresh cluster a Raft group of the nodes in the `--addr`
    /// node's config (its [[peers]] and itself). Run once, after every node has started.
    /// Each partition is initialized on the node that should lead it first (partition p on
    /// the (p % nodes)-th node in id order), so leaders start spread over the nodes.
    Init,
    /// Add a node to every partition's group: it catches up as a learner, then votes.
    /// Sent to each partition's leader; the node must be running (with the cluster's
    /// peer token and core count, and an empty data dir).
    AddNode {
        #[arg(long)]
        node_id: u64,
        /// Its node-link address (its peer_listen).
        #[arg(long)]
        peer_addr: String,
        /// Where its clients connect.
        #[arg(long)]
        client_addr: String,
    },
    /// Remove a node from every partition's group (it can be stopped afterwards).
    RemoveNode {
        #[arg(long)]
        node_id: u64,
    },
    /// Fault injection (nodes started with fault_injection = true only): the `--addr`
    /// node's link stops talking to NODE_ID.
    Isolate {
        #[arg(long)]
        node_id: u64,
    },
    /// Fault injection: undo every `isolate` on the `--addr` node.
    Heal,
}

#[derive(Subcommand)]
enum LogCommand {
    /// Validate every record of every partition: checksums, index continuity, torn tails.
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Print every log record (JSON lines with --json), one line per command item.
    Dump {
        #[arg(long)]
        data_dir: PathBuf,
        /// Only this partition.
        #[arg(long)]
        partition: Option<u32>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Rebuild every balance from the log (from a snapshot before --until when there is one)
    /// and print the state digest and totals as of --until (ns since the epoch).
    Replay {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        until: Option<u64>,
        /// Ignore snapshots: replay every entry from the first.
        #[arg(long)]
        from_genesis: bool,
        /// Also print every account's balance.
        #[arg(long)]
        balances: bool,
    },
    /// Replay from genesis and print, per log entry, a digest of what it decided (JSON lines;
    /// the state digest at checkpoints): the input of `audit diff`.
    Trace {
        #[arg(long)]
        data_dir: PathBuf,
        /// Entries between full state digests.
        #[arg(long, default_value_t = crate::wallet_audit_diff::CHECKPOINT_EVERY_DEFAULT)]
        checkpoint_every: u64,
    },
    /// Run the log through this build and another `wallet` build and report the first entry
    /// where they decide differently (exit 1 if they do).
    Diff {
        #[arg(long)]
        data_dir: PathBuf,
        /// The other build's `wallet` binary.
        #[arg(long)]
        against: PathBuf,
        #[arg(long, default_value_t = crate::wallet_audit_diff::CHECKPOINT_EVERY_DEFAULT)]
        checkpoint_every: u64,
    },
}

/// The whole program; `std::process::exit`s with 1 on failure.
pub fn main() {
    let cli = Cli::parse();
    if let Err(reason) = run(cli) {
        eprintln!("wallet: {reason}");
        std::process::exit(1);
    }
}

fn currency(code: &str) -> Result<Currency, String> {
    Currency::parse(code)
        .ok_or_else(|| format!("currency {code:?} is not three upper-case letters"))
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Log(command) => return crate::wallet_audit::log(command_log(command), cli.json),
        Command::Audit(AuditCommand::Replay {
            data_dir,
            until,
            from_genesis,
            balances,
        }) => {
            return crate::wallet_audit::replay(&data_dir, until, from_genesis, balances, cli.json)
        }
        Command::Audit(AuditCommand::Trace {
            data_dir,
            checkpoint_every,
        }) => return crate::wallet_audit_diff::trace(&data_dir, checkpoint_every),
        Command::Audit(AuditCommand::Diff {
            data_dir,
            against,
            checkpoint_every,
        }) => {
            return crate::wallet_audit_diff::diff(&data_dir, &against, checkpoint_every, cli.json)
        }
        _ => {}
    }
    let mut config = ClientConfig::new(cli.addr.clone());
    config.timeout_ms = cli.timeout_ms;
    if let Some(path) = &cli.token_file {
        let token =
            std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        config.token = Some(token.trim().as_bytes().to_vec());
    }
    if let Some(ca) = &cli.tls_ca {
        let name = cli
            .tls_server_name
            .as_deref()
            .unwrap_or_else(|| net::tls::host_of(&cli.addr));
        config.tls = Some(net::ClientTls::from_ca_file(ca, name)?);
    }
    if let Command::Watch {
        account,
        from_position,
        count,
    } = cli.command
    {
        return crate::wallet_read::watch(&config, account, from_position, count, cli.json);
    }
    if let Command::Cluster(command) = cli.command {
        use net::cluster_admin::{Action, ClusterChange};
        let change = |action, node_id, peer_addr: String, client_addr: String| ClusterChange {
            action,
            node_id,
            peer_addr,
            client_addr,
        };
        return match command {
            ClusterCommand::Status => crate::wallet_cluster::status(&config, cli.json),
            ClusterCommand::Init => crate::wallet_cluster::init(&config, cli.json),
            ClusterCommand::AddNode {
                node_id,
                peer_addr,
                client_addr,
            } => crate::wallet_cluster::change_everywhere(
                &config,
                change(Action::AddNode, node_id, peer_addr, client_addr),
                cli.json,
            ),
            ClusterCommand::RemoveNode { node_id } => crate::wallet_cluster::change_everywhere(
                &config,
                change(Action::RemoveNode, node_id, String::new(), String::new()),
                cli.json,
            ),
            ClusterCommand::Isolate { node_id } => crate::wallet_cluster::change_here(
                &config,
                change(Action::Isolate, node_id, String::new(), String::new()),
                cli.json,
            ),
            ClusterCommand::BalanceLeaders { timeout_secs } => {
                let results = crate::wallet_cluster::balance_leaders(
                    &config,
                    std::time::Duration::from_secs(timeout_secs),
                )?;
                crate::wallet_cluster::report_balance(&results, cli.json)
            }
            ClusterCommand::Heal => crate::wallet_cluster::change_here(
                &config,
                change(Action::HealAll, 0, String::new(), String::new()),
                cli.json,
            ),
        };
    }
    // Account and transfer commands go to their partitions' leaders when `--addr` is a node of
    // a cluster (`AnyClient`); the others ask the node given.
    let routed = || AnyClient::connect(config.clone()).map_err(|e| e.to_string());
    let node = || Client::connect(config.clone()).map_err(|e| e.to_string());
    match cli.command {
        Command::CreateAccount {
            id,
            currency: code,
            floor,
            frozen,
            user_data,
        } => {
            let account = NewAccount {
                id,
                currency: currency(&code)?,
                flags: if frozen { account_flags::FROZEN } else { 0 },
                floor,
                user_data,
            };
            let code = single(
                routed()?
                    .create_accounts(&[account])
                    .map_err(|e| e.to_string())?,
            )?;
            report(cli.json, code, json!({"id": id}))
        }
        Command::Transfer {
            id,
            from,
            to,
            amount,
            currency: code,
            user_data,
        } => {
            let transfer = NewTransfer {
                id,
                from,
                to,
                amount,
                currency: currency(&code)?,
                user_data,
            };
            send_transfer(&routed()?, transfer, cli.json)
        }
        Command::Deposit {
            id,
            issuer,
            to,
            amount,
            currency: code,
        } => {
            // A deposit is a transfer whose source is an issuer account.
            let transfer = NewTransfer {
                id,
                from: issuer,
                to,
                amount,
                currency: currency(&code)?,
                user_data: 0,
            };
            send_transfer(&routed()?, transfer, cli.json)
        }
        Command::Balance {
            id, at: Some(t), ..
        } => crate::wallet_read::balance_at(&node()?, id, At::Timestamp(t), cli.json),
        Command::Balance {
            id,
            at_position: Some(p),
            ..
        } => crate::wallet_read::balance_at(&node()?, id, At::Position(p), cli.json),
        Command::Totals => crate::wallet_read::totals(&node()?, cli.json),
        Command::History {
            id,
            limit,
            before,
            from,
            to,
        } => crate::wallet_read::history(
            &node()?,
            &crate::wallet_read::HistoryArgs {
                id,
                limit,
                before_position: before,
                from_timestamp: from,
                to_timestamp: to,
            },
            cli.json,
        ),
        Command::Balance { id, .. } => {
            let found = routed()?
                .lookup_accounts(&[id])
                .map_err(|e| e.to_string())?;
            let a = found
                .into_iter()
                .next()
                .flatten()
                .ok_or(format!("account {id} not found"))?;
            let available = a.available();
            if cli.json {
                println!(
                    "{}",
                    json!({
                        "id": a.id, "currency": a.currency.code(), "balance": a.balance,
                        "available": available, "held": a.held, "floor": a.floor,
                        "frozen": a.is_frozen(), "user_data": a.user_data, "timestamp": a.timestamp,
                    })
                );
            } else {
                println!(
                    "account {}: {} {} (available {}, held {}, floor {})",
                    a.id, a.balance, a.currency, available, a.held, a.floor
                );
            }
            Ok(())
        }
        Command::LookupTransfer { id } => {
            let found = routed()?
                .lookup_transfers(&[id])
                .map_err(|e| e.to_string())?;
            let found = found
                .into_iter()
                .next()
                .flatten()
                .ok_or(format!("transfer {id} not found"))?;
            let t = found.transfer;
            // applied | pending (TC/C running, amount held on the source) | cancelled
            let (status, reason) = match found.status {
                ResultCode::Ok => ("applied", None),
                ResultCode::Pending => ("pending", None),
                other => ("cancelled", Some(other.name())),
            };
            if cli.json {
                println!(
                    "{}",
                    json!({
                        "id": t.id, "from": t.from, "to": t.to, "amount": t.amount,
                        "currency": t.currency.code(), "user_data": t.user_data,
                        "timestamp": t.timestamp, "status": status, "reason": reason,
                    })
                );
            } else {
                let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
                println!(
                    "transfer {}: {} -> {} {} {} ({status}{why}, at {})",
                    t.id, t.from, t.to, t.amount, t.currency, t.timestamp
                );
            }
            Ok(())
        }
        Command::Log(_) | Command::Audit(_) | Command::Watch { .. } | Command::Cluster(_) => {
            unreachable!("handled above")
        }
        Command::Digest => {
            let digest = node()?.state_digest().map_err(|e| e.to_string())?;
            if cli.json {
                let parts: Vec<_> = digest
                    .partitions
                    .iter()
                    .map(|p| json!({"partition": p.partition, "last_index": p.last_index, "digest": format!("{:032x}", p.digest)}))
                    .collect();
                println!(
                    "{}",
                    json!({"digest": format!("{:032x}", digest.digest), "partitions": parts})
                );
            } else {
                println!("digest {:032x}", digest.digest);
                for p in &digest.partitions {
                    println!(
                        "  partition {}: {:032x} at index {}",
                        p.partition, p.digest, p.last_index
                    );
                }
            }
            Ok(())
        }
        Command::Status => {
            let client = node()?;
            let status = client.status().map_err(|e| e.to_string())?;
            let read_models = client.read_model_status().map_err(|e| e.to_string())?;
            let map = client.partition_map().map_err(|e| e.to_string())?;
            let read_model = |p: u32| read_models.iter().find(|r| r.partition == p);
            let leader = |p: u32| map.partitions.get(p as usize).copied();
            if cli.json {
                let parts: Vec<_> = status
                    .partitions
                    .iter()
                    .map(|p| json!({"partition": p.partition, "last_index": p.last_index, "durable_index": p.durable_index, "accounts": p.accounts, "transfers": p.transfers, "fsyncs": p.fsyncs, "leader": leader(p.partition).and_then(|l| l.leader), "term": leader(p.partition).map(|l| l.term), "read_model": read_model(p.partition).map(crate::wallet_read::status_json)}))
                    .collect();
                let nodes: Vec<_> = map
                    .nodes
                    .iter()
                    .map(|n| json!({"node_id": n.node_id, "addr": n.client_addr}))
                    .collect();
                println!(
                    "{}",
                    json!({"node": cli.addr, "cores": status.cores, "cluster_id": map.cluster_id, "nodes": nodes, "partitions": parts})
                );
            } else {
                println!(
                    "node {}: {} cores, {} partitions, cluster {} of {} node(s)",
                    cli.addr,
                    status.cores,
                    status.partitions.len(),
                    map.cluster_id,
                    map.nodes.len()
                );
                for p in &status.partitions {
                    let led_by = match leader(p.partition) {
                        Some(l) => match l.leader {
                            Some(id) => format!("leader node {id} (term {})", l.term),
                            None => "no leader".to_string(),
                        },
                        None => "leader unknown".to_string(),
                    };
                    println!(
                        "  partition {}: {led_by}, index {} (durable {}), {} accounts, {} transfers, {}",
                        p.partition,
                        p.last_index,
                        p.durable_index,
                        p.accounts,
                        p.transfers,
                        read_model(p.partition)
                            .map(crate::wallet_read::status_human)
                            .unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
    }
}

/// Sends one transfer and reports its result code.
fn send_transfer(client: &AnyClient, transfer: NewTransfer, as_json: bool) -> Result<(), String> {
    let code = single(
        client
            .create_transfers(&[transfer])
            .map_err(|e| e.to_string())?,
    )?;
    report(as_json, code, json!({"id": transfer.id}))
}

fn single(results: Vec<ResultCode>) -> Result<ResultCode, String> {
    results
        .into_iter()
        .next()
        .ok_or_else(|| "the server sent no result".to_string())
}

/// Prints the result; `ok` and `exists` (a harmless repeat) succeed, every other code fails.
fn report(as_json: bool, code: ResultCode, mut fields: serde_json::Value) -> Result<(), String> {
    if as_json {
        fields["result"] = json!(code.name());
        println!("{fields}");
    } else {
        println!("{code}");
    }
    match code {
        ResultCode::Ok | ResultCode::Exists => Ok(()),
        other => Err(other.name().to_string()),
    }
}

fn command_log(command: LogCommand) -> crate::wallet_audit::LogAction {
    match command {
        LogCommand::Verify { data_dir } => crate::wallet_audit::LogAction::Verify { data_dir },
        LogCommand::Dump {
            data_dir,
            partition,
        } => crate::wallet_audit::LogAction::Dump {
            data_dir,
            partition,
        },
    }
}
