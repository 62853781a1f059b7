//! What the child processes' logs tell after a run: logins and refused
//! (expired) tokens, which show the token TTL at work, and panics, which are
//! failures whatever the checker says.

use std::path::Path;

use serde::Serialize;

/// Findings in the logs directory.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogFindings {
    /// Successful logins at lula-auth (every start of a daemon or twin, and
    /// every renewal of an expiring or expired token).
    pub logins: u64,
    /// Reconnects the hub refused with 401 because the token had expired (or
    /// its session was gone), after which the daemon logged in again.
    pub refused_tokens: u64,
    /// Lines reporting a panic, as `file: line`.
    pub panics: Vec<String>,
    /// Per log file, its count of WARN and ERROR lines (expected under
    /// faults; listed to point at where to look).
    pub warnings: Vec<(String, u64)>,
}

/// Reads every `*.log` in `dir`.
pub fn scan(dir: &Path) -> LogFindings {
    let mut found = LogFindings::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    for path in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        let mut warnings = 0;
        for line in text.lines() {
            if line.contains("panicked at") {
                found.panics.push(format!("{name}: {line}"));
            }
            if line.contains(" WARN ") || line.contains(" ERROR ") {
                warnings += 1;
            }
            if name == "auth.log" && line.contains("logged in") {
                found.logins += 1;
            }
            if line.contains("hub refused the session token") {
                found.refused_tokens += 1;
            }
        }
        if warnings > 0 {
            found.warnings.push((name, warnings));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_logins_refusals_panics_and_warnings() {
        let dir = std::env::temp_dir().join(format!("lula-chaos-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("auth.log"),
            "x  INFO lula_auth: logged in client=dev-01\nx  INFO lula_auth: logged in\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("dev-01.log"),
            "x  INFO hub refused the session token; logging in again\nx  WARN disconnected\nthread 'main' panicked at x.rs:1\n",
        )
        .unwrap();
        let f = scan(&dir);
        assert_eq!(f.logins, 2);
        assert_eq!(f.refused_tokens, 1);
        assert_eq!(f.panics.len(), 1);
        assert_eq!(f.warnings, vec![("dev-01.log".to_string(), 1)]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
