//! The ledger's nouns: currencies, accounts and applied transfers.
//!
//! Money is always an integer count of minor units (cents, satoshis...). A balance is an `i64`
//! so that issuer accounts can go below zero down to their `floor`; ordinary wallets have a
//! floor of 0 and can never be overdrawn.

use rkyv::{Archive, Deserialize, Serialize};

/// An account id, chosen by the client. 0 and `u128::MAX` are reserved (invalid).
pub type AccountId = u128;
/// A transfer id, chosen by the client: the idempotency key. 0 and `u128::MAX` are reserved.
pub type TransferId = u128;

/// An ISO 4217 style currency code: three ASCII upper-case letters packed little-endian
/// into a `u32` (`"EUR"` = `b'E' | b'U' << 8 | b'R' << 16`).
#[derive(
    Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[rkyv(derive(Debug))]
pub struct Currency(pub u32);

impl Currency {
    /// Parses `"EUR"`-style codes; anything else is `None`.
    pub fn parse(code: &str) -> Option<Currency> {
        let bytes = code.as_bytes();
        if bytes.len() != 3 || !bytes.iter().all(|b| b.is_ascii_uppercase()) {
            return None;
        }
        Some(Currency(
            bytes[0] as u32 | (bytes[1] as u32) << 8 | (bytes[2] as u32) << 16,
        ))
    }

    /// True when the packed value is three upper-case ASCII letters and a zero high byte.
    pub fn is_valid(self) -> bool {
        let b = self.0.to_le_bytes();
        b[3] == 0 && b[..3].iter().all(|c| c.is_ascii_uppercase())
    }

    /// The three-letter code (`"???"` for an invalid value, which the state machine never stores).
    pub fn code(self) -> String {
        if !self.is_valid() {
            return "???".to_string();
        }
        let b = self.0.to_le_bytes();
        String::from_utf8_lossy(&b[..3]).into_owned()
    }
}

impl ArchivedCurrency {
    pub fn to_native(&self) -> Currency {
        Currency(self.0.to_native())
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.code())
    }
}

/// Account flag bits. Unknown bits are rejected at creation (`flags_invalid`).
pub mod account_flags {
    /// No debit or credit may touch a frozen account.
    pub const FROZEN: u32 = 1 << 0;
    /// Every bit a client may set.
    pub const ALL: u32 = FROZEN;
}

/// The state of one account, as the state machine keeps it.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Account {
    pub id: AccountId,
    pub currency: Currency,
    pub flags: u32,
    /// Posted balance in minor units. Never below `floor`.
    pub balance: i64,
    /// Money debited from this account into in-flight cross-partition transfers (TC/C holds).
    /// Conservation counts `balance + held`.
    pub held: i64,
    /// Credits reserved by cross-partition transfers that passed their Try here but are not
    /// confirmed yet (not money: a reservation, so the Confirm can never overflow).
    pub incoming: i64,
    /// Lowest allowed balance: 0 for wallets, negative for issuers (how money enters).
    pub floor: i64,
    pub user_data: u64,
    /// Log timestamp (ns) of the command that created the account.
    pub timestamp: u64,
}

impl Account {
    /// Every field zero: the empty slot of the account table, and the placeholder next to a
    /// `not_found` answer.
    pub const ZERO: Account = Account {
        id: 0,
        currency: Currency(0),
        flags: 0,
        balance: 0,
        held: 0,
        incoming: 0,
        floor: 0,
        user_data: 0,
        timestamp: 0,
    };

    pub fn is_frozen(&self) -> bool {
        self.flags & account_flags::FROZEN != 0
    }

    /// What can still be debited: `balance - floor`.
    pub fn available(&self) -> i128 {
        self.balance as i128 - self.floor as i128
    }

    /// Whether a credit of `amount` leaves room for everything already in flight here: every
    /// credit keeps `balance + held + incoming` within an i64, so that a held amount refunded
    /// by a Cancel or an incoming one credited by a Confirm can never overflow the balance
    /// (neither is checked when it lands: it cannot be refused then).
    pub fn has_room_for(&self, amount: i64) -> bool {
        self.balance
            .checked_add(self.held)
            .and_then(|sum| sum.checked_add(self.incoming))
            .and_then(|sum| sum.checked_add(amount))
            .is_some()
    }
}

/// A transfer that was applied (only applied transfers are remembered: a rejected id was never
/// applied, so a client may reuse it).
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Transfer {
    pub id: TransferId,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: u64,
    pub currency: Currency,
    pub user_data: u64,
    /// Log timestamp (ns), unique and strictly increasing within a partition.
    pub timestamp: u64,
}

/// A transfer as a lookup sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferLookup {
    pub transfer: Transfer,
    /// `Ok`: applied. `Pending`: a cross-partition transfer still running its TC/C (the
    /// amount is held on the source account). Any other code: cancelled for that reason
    /// (the source was refunded; nothing moved).
    pub status: crate::result_code::ResultCode,
}

/// True for ids a client may use (0 and `u128::MAX` are reserved as sentinels).
pub fn is_valid_id(id: u128) -> bool {
    id != 0 && id != u128::MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_round_trips_and_rejects_garbage() {
        let eur = Currency::parse("EUR").unwrap();
        assert!(eur.is_valid());
        assert_eq!(eur.code(), "EUR");
        assert!(Currency::parse("eur").is_none());
        assert!(Currency::parse("EURO").is_none());
        assert!(!Currency(0).is_valid());
        assert!(!Currency(u32::MAX).is_valid());
    }
}
