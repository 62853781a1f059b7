//! What the child processes' logs tell after a run: logins, tokens that
//! expired (connections the hub closed with 4001, reconnects it refused with
//! 401) and the daemons' logins after them, which show the token TTL at work,
//! and panics, which are failures whatever the checker says.

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
    /// Live connections the hub closed with 4001 (session expired) because
    /// the token ran out mid-sync, as the daemons logged them.
    pub expired_mid_sync: u64,
    /// Connections a daemon made again, with a fresh login, after its token
    /// had expired (a 4001 close or a 401 refusal since its last connection).
    pub relogins_after_expiry: u64,
    /// Lines reporting a panic, as `file: line`.
    pub panics: Vec<String>,
    /// Per log file, its count of WARN and ERROR lines (expected under
    /// faults; listed to point at where to look).
    pub warnings: Vec<(String, u64)>,
}

/// How a daemon's log line names the close code of an expired session.
const EXPIRED_CODE: &str = "code=4001";

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
        // An expiry seen since this daemon's last connection.
        let mut expired = false;
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
                expired = true;
            }
            if line.contains("hub ended the session") && line.contains(EXPIRED_CODE) {
                found.expired_mid_sync += 1;
                expired = true;
            }
            if line.contains("connected to hub") && std::mem::take(&mut expired) {
                found.relogins_after_expiry += 1;
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
    fn counts_logins_expiries_relogins_panics_and_warnings() {
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
        std::fs::write(
            dir.join("dev-02.log"),
            concat!(
                "x  INFO lula_client::session: connected to hub upstream=0-0\n",
                "x  INFO lula_client::daemon: hub ended the session; logging in again code=4003\n",
                "x  INFO lula_client::session: connected to hub upstream=1-0\n",
                "x  INFO lula_client::daemon: hub ended the session; logging in again code=4001\n",
                "x  INFO lula_client::daemon: hub refused the session token; logging in again\n",
                "x  INFO lula_client::session: connected to hub upstream=2-0\n",
                "x  INFO lula_client::session: connected to hub upstream=3-0\n",
            ),
        )
        .unwrap();
        let f = scan(&dir);
        assert_eq!(f.logins, 2);
        assert_eq!(f.refused_tokens, 2);
        assert_eq!(f.expired_mid_sync, 1);
        assert_eq!(f.relogins_after_expiry, 1);
        assert_eq!(f.panics.len(), 1);
        assert_eq!(f.warnings, vec![("dev-01.log".to_string(), 1)]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
