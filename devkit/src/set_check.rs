//! The one set check of exactly-once, shared by the integration tests and the benchmarks:
//! every acknowledged transaction is in the primary's ledger once, and nothing else is.
//! (The ledger's key makes a duplicate row impossible; the check counts rows anyway, so
//! that a changed schema could not hide one.)

use std::collections::HashSet;
use std::fmt;

use sqlx::PgConnection;
use uuid::Uuid;

/// Every transaction id in the ledger of the primary `conn` is connected to.
pub async fn ledger(conn: &mut PgConnection) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar("SELECT transaction_id FROM opsdb_api.applied_transaction")
        .fetch_all(conn)
        .await
}

/// What the ledger holds against what was acknowledged.
#[derive(Debug)]
pub struct LedgerCheck {
    /// Ledger rows, and distinct transaction ids among them.
    pub rows: usize,
    pub distinct: usize,
    /// Acknowledged transactions, and distinct ids among them (a write answered twice
    /// through its idempotency key is one transaction).
    pub acked: usize,
    pub acked_distinct: usize,
    /// Acknowledged, never applied.
    pub missing: Vec<Uuid>,
    /// Applied, never acknowledged.
    pub extra: Vec<Uuid>,
}

impl LedgerCheck {
    /// Every acknowledged transaction applied once, nothing else applied.
    pub fn holds(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.rows == self.distinct
    }
}

impl fmt::Display for LedgerCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 10;
        write!(
            f,
            "ledger: {} rows ({} distinct) for {} acknowledged transactions ({} distinct): \
             {} missing, {} not acknowledged",
            self.rows,
            self.distinct,
            self.acked,
            self.acked_distinct,
            self.missing.len(),
            self.extra.len()
        )?;
        if !self.missing.is_empty() {
            let shown: Vec<_> = self.missing.iter().take(SHOWN).collect();
            write!(f, "; acknowledged but never applied: {shown:?}")?;
        }
        if !self.extra.is_empty() {
            let shown: Vec<_> = self.extra.iter().take(SHOWN).collect();
            write!(f, "; applied but never acknowledged: {shown:?}")?;
        }
        Ok(())
    }
}

/// Compares the ledger of the primary `conn` is connected to with `acked`.
pub async fn exactly_once(conn: &mut PgConnection, acked: &[Uuid]) -> sqlx::Result<LedgerCheck> {
    let rows = ledger(conn).await?;
    Ok(compare(&rows, acked))
}

fn compare(rows: &[Uuid], acked: &[Uuid]) -> LedgerCheck {
    let applied: HashSet<Uuid> = rows.iter().copied().collect();
    let wanted: HashSet<Uuid> = acked.iter().copied().collect();
    LedgerCheck {
        rows: rows.len(),
        distinct: applied.len(),
        acked: acked.len(),
        acked_distinct: wanted.len(),
        missing: wanted.difference(&applied).copied().collect(),
        extra: applied.difference(&wanted).copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_holds_only_for_each_acknowledged_transaction_once() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        assert!(compare(&[a, b], &[b, a, a]).holds());
        let missing = compare(&[a], &[a, b]);
        assert!(!missing.holds());
        assert_eq!(missing.missing, vec![b]);
        let extra = compare(&[a, c], &[a]);
        assert!(!extra.holds());
        assert_eq!(extra.extra, vec![c]);
        let twice = compare(&[a, a], &[a]);
        assert!(!twice.holds(), "{twice}");
    }
}
