//! The run's timeline: every fault, restart and phase, with the time since the
//! start, in `<run dir>/events.log` (and on stderr with `--verbose`), so a
//! failure can be lined up against the child processes' logs.

use std::fmt::Display;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context as _;

/// The timeline of one run.
pub struct Events {
    start: Instant,
    file: Mutex<File>,
    echo: bool,
}

impl Events {
    /// Creates `path`; with `echo`, lines also go to stderr.
    pub fn create(path: &Path, echo: bool) -> anyhow::Result<Self> {
        let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
        Ok(Events {
            start: Instant::now(),
            file: Mutex::new(file),
            echo,
        })
    }

    /// Seconds since the run started.
    pub fn elapsed_secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Records one line, stamped with the time since the start and the wall
    /// clock, echoed to stderr if asked.
    pub fn note(&self, what: impl Display) {
        self.write(what, self.echo);
    }

    /// Records one line in the file only (frequent events such as proxy faults).
    pub fn detail(&self, what: impl Display) {
        self.write(what, false);
    }

    fn write(&self, what: impl Display, echo: bool) {
        let wall = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let line = format!("[{:>9.3}s {wall}] {what}\n", self.elapsed_secs());
        if echo {
            eprint!("{line}");
        }
        // The timeline is diagnostics: a full disk must not stop the run.
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = file.write_all(line.as_bytes());
    }
}
