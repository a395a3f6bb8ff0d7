//! Every per-item result code, in one place.
//!
//! The numeric values are part of the wire protocol and the log format: never renumber, only
//! append. The snake_case names are what the CLI and JSON outputs print.

macro_rules! result_codes {
    ($($(#[$doc:meta])* $name:ident = $value:literal => $text:literal,)*) => {
        /// The outcome of one command (one account creation, one transfer, one lookup).
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ResultCode {
            $($(#[$doc])* $name = $value,)*
        }

        impl ResultCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [ResultCode] = &[$(ResultCode::$name,)*];

            /// The stable snake_case name.
            pub fn name(self) -> &'static str {
                match self { $(ResultCode::$name => $text,)* }
            }

            /// Decodes a wire/log value; unknown values are `None`.
            pub fn from_u8(value: u8) -> Option<ResultCode> {
                match value { $($value => Some(ResultCode::$name),)* _ => None }
            }

            /// Parses a snake_case name.
            pub fn from_name(name: &str) -> Option<ResultCode> {
                match name { $($text => Some(ResultCode::$name),)* _ => None }
            }
        }
    };
}

result_codes! {
    /// Applied.
    Ok = 0 => "ok",
    /// The id was applied before with identical fields; nothing changed (a harmless retry).
    Exists = 1 => "exists",
    /// The id was applied before with different fields; nothing changed.
    ExistsWithDifferentFields = 2 => "exists_with_different_fields",
    /// Id 0 or `u128::MAX` (reserved).
    IdInvalid = 3 => "id_invalid",
    /// Not three upper-case ASCII letters.
    CurrencyInvalid = 4 => "currency_invalid",
    /// An account floor above zero.
    FloorInvalid = 5 => "floor_invalid",
    /// Unknown account flag bits.
    FlagsInvalid = 6 => "flags_invalid",
    /// Transfer from an account to itself.
    SameAccount = 7 => "same_account",
    /// Transfer amount of zero.
    ZeroAmount = 8 => "zero_amount",
    /// The debited (`from`) account does not exist.
    FromAccountNotFound = 9 => "from_account_not_found",
    /// The credited (`to`) account does not exist.
    ToAccountNotFound = 10 => "to_account_not_found",
    /// Transfer currency differs from an account's currency.
    CurrencyMismatch = 11 => "currency_mismatch",
    /// The debited account is frozen.
    FromAccountFrozen = 12 => "from_account_frozen",
    /// The credited account is frozen.
    ToAccountFrozen = 13 => "to_account_frozen",
    /// The debit would take the balance below its floor.
    InsufficientFunds = 14 => "insufficient_funds",
    /// An amount or resulting balance outside `i64`.
    Overflow = 15 => "overflow",
    /// The two accounts live in different partitions and this build cannot move money between
    /// partitions yet (replaced by TC/C).
    CrossPartitionUnsupported = 16 => "cross_partition_unsupported",
    /// The command reached a partition that does not own its account (a routing bug).
    WrongPartition = 17 => "wrong_partition",
    /// Lookup: no such account or transfer.
    NotFound = 18 => "not_found",
    /// The node is overloaded; retry later (safe for transfers: same id).
    Busy = 19 => "busy",
    /// The log could not be made durable (an fsync or other I/O error, not a full disk): the
    /// partition acknowledges no write until it is restarted.
    StorageError = 20 => "storage_error",
    /// The node is shutting down.
    ShuttingDown = 21 => "shutting_down",
    /// This node is not the leader of the partition (replication).
    NotLeader = 22 => "not_leader",
    /// Internal: a cross-partition transfer whose TC/C is still running. Clients never see it;
    /// they get the final code when the transfer is decided.
    Pending = 23 => "pending",
    /// The cross-partition transfer was cancelled because the destination did not answer its
    /// Try in time; the source was refunded, nothing moved.
    TccTimeout = 24 => "tcc_timeout",
    /// A Try reached the destination after that transfer's Cancel (out of order); refused.
    TccCancelled = 25 => "tcc_cancelled",
    /// The disk is full (or the file size limit was reached): the partition refuses writes
    /// until space returns, then accepts them again by itself. Nothing of this batch was
    /// applied; retry the same ids later. Reads keep working.
    StorageFull = 26 => "storage_full",
}

impl std::fmt::Display for ResultCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_by_value_and_name() {
        for (i, code) in ResultCode::ALL.iter().enumerate() {
            assert_eq!(*code as u8 as usize, i, "codes are dense and ordered");
            assert_eq!(ResultCode::from_u8(*code as u8), Some(*code));
            assert_eq!(ResultCode::from_name(code.name()), Some(*code));
        }
        assert_eq!(ResultCode::from_u8(250), None);
    }
}
