//! The wall clock, as a value services take in their config so tests can
//! drive it: TOTP windows and token expiry in lula-auth, token expiry in
//! lula-hub. Production reads the system clock.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A source of the current wall-clock time. Cheap to clone.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock(Arc::new(SystemTime::now))
    }

    /// A clock that reads `f`.
    pub fn from_fn(f: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Clock(Arc::new(f))
    }

    /// The current time.
    pub fn now(&self) -> SystemTime {
        (self.0)()
    }

    /// Seconds since the epoch.
    pub fn epoch_secs(&self) -> u64 {
        self.epoch().as_secs()
    }

    /// Milliseconds since the epoch.
    pub fn epoch_ms(&self) -> u64 {
        self.epoch().as_millis() as u64
    }

    fn epoch(&self) -> Duration {
        self.now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}
