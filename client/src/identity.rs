//! The device's identity on disk: its client id, the secret it registered with,
//! and whether registration succeeded.
//!
//! The secret is generated once and written before the first registration
//! attempt, so a daemon that crashes between a successful registration and
//! recording it still holds the secret the hub knows. The file is written
//! atomically (temporary file, fsync, rename, fsync of the directory) with mode
//! 0600, and refused if anyone but the owner can read it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use lula_protocol::{ClientId, Redacted};
use serde::{Deserialize, Serialize};

/// Name of the identity file inside the state directory.
pub const IDENTITY_FILE: &str = "identity.json";

/// Why the identity could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the state directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file exists but is not a valid identity.
    #[error("{0}: not a valid lula identity file: {1}")]
    Corrupt(PathBuf, String),
    /// The state directory belongs to another client id.
    #[error("state dir {path} belongs to client {found}, not {expected}; use another --state-dir")]
    OtherClient {
        /// The state directory.
        path: PathBuf,
        /// The id in the file.
        found: String,
        /// The configured id.
        expected: String,
    },
    /// The file is readable by group or others.
    #[error("{0} is readable by other users (mode {1:o}); run chmod 600 on it")]
    TooOpen(PathBuf, u32),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdentityFile {
    client_id: ClientId,
    secret: String,
    registered: bool,
}

/// The device identity, backed by `<state-dir>/identity.json`.
#[derive(Debug)]
pub struct Identity {
    path: PathBuf,
    /// The device.
    pub client_id: ClientId,
    /// The device's own secret, sent to lula-auth to register and log in.
    pub secret: Redacted<String>,
    /// Whether lula-auth accepted the registration.
    pub registered: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates `dir` (and missing parents) as 0700: what the daemon keeps there
/// is nobody else's business. An existing directory keeps its mode.
fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io(dir))
}

impl Identity {
    /// Loads the identity of `client_id` from `state_dir`, creating the directory
    /// and a fresh secret on first start.
    pub fn load_or_create(state_dir: &Path, client_id: &ClientId) -> Result<Self, IdentityError> {
        let path = state_dir.join(IDENTITY_FILE);
        match Self::load(&path)? {
            Some(id) if &id.client_id != client_id => Err(IdentityError::OtherClient {
                path: state_dir.to_owned(),
                found: id.client_id.to_string(),
                expected: client_id.to_string(),
            }),
            Some(id) => Ok(id),
            None => {
                create_private_dir(state_dir)?;
                let secret = B64URL.encode(rand::random::<[u8; 32]>());
                Self::create(state_dir, client_id, Redacted::new(secret), false)
            }
        }
    }

    /// Writes a new identity file in `state_dir` (created if missing) with
    /// `secret` and `registered` as given: a fresh device's, or one taken
    /// over from the Node lula-client (`crate::takeover`).
    pub fn create(
        state_dir: &Path,
        client_id: &ClientId,
        secret: Redacted<String>,
        registered: bool,
    ) -> Result<Self, IdentityError> {
        fs::create_dir_all(state_dir).map_err(io(state_dir))?;
        let id = Identity {
            path: state_dir.join(IDENTITY_FILE),
            client_id: client_id.clone(),
            secret,
            registered,
        };
        id.save()?;
        Ok(id)
    }

    /// Reads an identity file if it exists.
    pub fn load(path: &Path) -> Result<Option<Self>, IdentityError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path)(e)),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(path).map_err(io(path))?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(IdentityError::TooOpen(path.to_owned(), mode));
            }
        }
        let file: IdentityFile = serde_json::from_str(&text)
            .map_err(|e| IdentityError::Corrupt(path.to_owned(), e.to_string()))?;
        Ok(Some(Identity {
            path: path.to_owned(),
            client_id: file.client_id,
            secret: Redacted::new(file.secret),
            registered: file.registered,
        }))
    }

    /// Records the registration state durably.
    pub fn set_registered(&mut self, registered: bool) -> Result<(), IdentityError> {
        self.registered = registered;
        self.save()
    }

    fn save(&self) -> Result<(), IdentityError> {
        let file = IdentityFile {
            client_id: self.client_id.clone(),
            secret: self.secret.expose().clone(),
            registered: self.registered,
        };
        let text = serde_json::to_string_pretty(&file)
            .map_err(|e| IdentityError::Corrupt(self.path.clone(), e.to_string()))?;
        let tmp = self.path.with_extension("json.tmp");
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp).map_err(io(&tmp))?;
        #[cfg(unix)]
        {
            // `mode` applies only when the file is created; a stale temp file keeps its own.
            use std::os::unix::fs::PermissionsExt as _;
            f.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(io(&tmp))?;
        }
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(s: &str) -> ClientId {
        s.parse().unwrap()
    }

    #[test]
    fn first_start_creates_a_private_secret_that_later_starts_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path(), &client("dev-1")).unwrap();
        assert!(!a.registered);
        assert!(a.secret.expose().len() >= 43);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.path().join(IDENTITY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mut b = Identity::load_or_create(dir.path(), &client("dev-1")).unwrap();
        assert_eq!(a.secret, b.secret);
        b.set_registered(true).unwrap();
        assert!(
            Identity::load_or_create(dir.path(), &client("dev-1"))
                .unwrap()
                .registered
        );
    }

    #[test]
    fn another_client_id_or_an_open_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path(), &client("dev-1")).unwrap();
        assert!(matches!(
            Identity::load_or_create(dir.path(), &client("dev-2")),
            Err(IdentityError::OtherClient { .. })
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let path = dir.path().join(IDENTITY_FILE);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                Identity::load_or_create(dir.path(), &client("dev-1")),
                Err(IdentityError::TooOpen(..))
            ));
        }
    }

    #[test]
    fn corrupt_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        fs::write(&path, "{").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(matches!(
            Identity::load_or_create(dir.path(), &client("dev-1")),
            Err(IdentityError::Corrupt(..))
        ));
    }
}
