//! The hub-wide budget of bytes for entries carried in parts
//! ([`lula_protocol::parts`]), both ways: an upstream entry being put
//! together (and appended), a downstream entry being cut into push frames.
//! Each holds a [`Reservation`] of its size until it is done with, so a
//! hub's memory for such entries stays bounded however many devices send or
//! receive them at once (`--assembly-bytes`).

use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Memory an entry's values cost beside their bytes (a `Vec` each).
const PER_VALUE_BYTES: usize = 32;

/// The budget; cheap to clone, clones share it.
#[derive(Clone)]
pub struct PartsBudget {
    bytes: Arc<Semaphore>,
    total: usize,
    /// `lula_hub_assembly_bytes`: what is held now.
    held: Gauge,
}

/// A share of the budget, given back when dropped.
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
    bytes: i64,
    held: Gauge,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.held.dec_by(self.bytes);
    }
}

impl PartsBudget {
    /// A budget of `total` bytes, shown in `held`.
    pub fn new(total: usize, held: Gauge) -> Self {
        PartsBudget {
            bytes: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
            total,
            held,
        }
    }

    /// What an entry of `bytes` bytes and `values` keys plus values costs.
    pub fn cost(bytes: usize, values: usize) -> usize {
        bytes.saturating_add(values.saturating_mul(PER_VALUE_BYTES))
    }

    /// A share of `cost` bytes now, or `None` while the budget is spent.
    pub fn try_reserve(&self, cost: usize) -> Option<Reservation> {
        let permits = self.permits(cost);
        let permit = self.bytes.clone().try_acquire_many_owned(permits).ok()?;
        Some(self.held(permit, permits))
    }

    /// A share of `cost` bytes, once there is room.
    pub async fn reserve(&self, cost: usize) -> Reservation {
        let permits = self.permits(cost);
        let permit = self
            .bytes
            .clone()
            .acquire_many_owned(permits)
            .await
            .expect("the budget is never closed");
        self.held(permit, permits)
    }

    /// Never more than the whole budget, so one entry always fits.
    fn permits(&self, cost: usize) -> u32 {
        u32::try_from(cost.min(self.total)).unwrap_or(u32::MAX)
    }

    fn held(&self, permit: OwnedSemaphorePermit, permits: u32) -> Reservation {
        self.held.inc_by(i64::from(permits));
        Reservation {
            _permit: permit,
            bytes: i64::from(permits),
            held: self.held.clone(),
        }
    }
}
