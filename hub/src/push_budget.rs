//! The hub-wide budget of push data being read and encoded at once
//! ([`PUSH_ENCODE_BYTES`]).
//!
//! Each push window bounds what one stream of one connection holds, but every
//! connection subscribed to broadcasts reads the same new entry at about the
//! same moment, and while it is read and encoded it exists two or three times
//! over. This semaphore admits those reads by their expected size, so at most
//! about [`PUSH_ENCODE_BYTES`] are in that state at once however many
//! connections there are; small reads (the common case) take one unit and
//! barely wait.

use std::sync::LazyLock;

use lula_protocol::limits::PUSH_ENCODE_BYTES;
use tokio::sync::{Semaphore, SemaphorePermit};

/// One unit of the budget.
const UNIT: usize = 64 * 1024;

/// Units in the whole budget.
const UNITS: usize = PUSH_ENCODE_BYTES / UNIT;

static BUDGET: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(UNITS));

/// A share of the budget, given back when dropped.
pub type Permit = SemaphorePermit<'static>;

/// Waits for room for a read of about `bytes` (capped at the whole budget,
/// so one read always fits).
pub async fn acquire(bytes: usize) -> Permit {
    let units = bytes.div_ceil(UNIT).clamp(1, UNITS) as u32;
    // The semaphore is never closed.
    BUDGET
        .acquire_many(units)
        .await
        .expect("the push budget is never closed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_larger_than_the_budget_takes_all_of_it_and_waits_for_none() {
        let all = acquire(usize::MAX).await;
        assert_eq!(BUDGET.available_permits(), 0);
        drop(all);
        let small = acquire(10).await;
        assert!(BUDGET.available_permits() < UNITS);
        drop(small);
    }
}
