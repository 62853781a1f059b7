//! `lula-auth import-node`: a one-off import of the Node lula-auth's device
//! records, so a device registered there logs in here with the secret it has.
//!
//! The Node lula-auth kept one hash per device, `lula:client:<client>:h`
//! (its key prefix `lula:`), with the fields ours has, under the same names:
//! - `otpSecret`: the provisioned base32 TOTP secret;
//! - `regDeadline`: epoch ms, removed by registration;
//! - `secret`: once registered, the bcrypt hash of the device's secret, made
//!   by the Node `bcrypt` package (`$2b$`, cost 12 by default), which our
//!   bcrypt verifies as is.
//!
//! So the import copies those three fields into `lula-auth:client:<client>:h`.
//! A record whose `secret` is not a bcrypt hash we can verify is skipped and
//! reported: such a device is re-provisioned instead (`lula-auth provision
//! --from-file`, which provisions a list of devices in one step). A device
//! that already has a record of ours is left alone (ours wins): it was
//! provisioned or registered here already. The Node keys are only read.
//!
//! Node fleets often used secrets shorter than our default minimum of 16
//! bytes (`lula-secret`); a hash does not tell the length, so the import
//! cannot check it. Such devices need `--min-secret-len` lowered (see
//! docs/MIGRATING.md) or they get 400 at login, which lula-client logs at warn.

use std::sync::LazyLock;

use lula_protocol::ClientId;
use lula_protocol::keys::escape_glob;
use lula_protocol::keys::{AuthKeys, fields};
use redis::Script;
use redis::aio::ConnectionLike;
use serde::Serialize;

use crate::error::AuthError;

/// KEYS[1] our client hash. ARGV[1] otpSecret, ARGV[2] regDeadline, ARGV[3]
/// secret hash (each '' when absent), ARGV[4] '1' for a dry run. Writes the
/// non-empty fields unless our record exists; returns 'exists' or 'imported'.
const IMPORT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
if ARGV[4] == '1' then return 'imported' end
local names = {'otpSecret', 'regDeadline', 'secret'}
for i = 1, 3 do
  if ARGV[i] ~= '' then redis.call('HSET', KEYS[1], names[i], ARGV[i]) end
end
return 'imported'
"#;

static IMPORT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(IMPORT));

/// What happened (or, in a dry run, would happen) to one Node record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Imported {
    /// The device.
    pub client: String,
    /// `registered` (a secret hash came along), `provisioned` (only an OTP
    /// secret and deadline), `exists` (ours kept), or `skipped`.
    pub outcome: &'static str,
    /// Why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Imports every `<node_prefix>:client:<client>:h` read on `node` (the Node
/// lula-auth's Redis, a single server: it is scanned) into `keys`' client
/// records on `ours` (`dry_run`: reports without writing), in key order.
pub async fn import_node<N: ConnectionLike, C: ConnectionLike>(
    node: &mut N,
    ours: &mut C,
    keys: &AuthKeys,
    node_prefix: &str,
    dry_run: bool,
) -> Result<Vec<Imported>, AuthError> {
    let pattern = format!("{}:client:*:h", escape_glob(node_prefix));
    let node_keys = lula_runtime::redis::scan_keys(node, &pattern).await?;
    let mut report = Vec::with_capacity(node_keys.len());
    for key in node_keys {
        let record = NodeRecord::read(node, node_prefix, &key).await?;
        report.push(import_one(ours, keys, record, dry_run).await?);
    }
    Ok(report)
}

/// One Node record as read.
struct NodeRecord {
    raw: String,
    otp_secret: Option<String>,
    deadline: Option<String>,
    secret: Option<String>,
}

impl NodeRecord {
    async fn read<N: ConnectionLike>(
        node: &mut N,
        node_prefix: &str,
        key: &str,
    ) -> Result<Self, AuthError> {
        let raw = key
            .strip_prefix(&format!("{node_prefix}:client:"))
            .and_then(|k| k.strip_suffix(":h"))
            .unwrap_or(key)
            .to_owned();
        let (otp_secret, deadline, secret) = redis::cmd("HMGET")
            .arg(key)
            .arg(fields::OTP_SECRET)
            .arg(fields::REG_DEADLINE)
            .arg(fields::SECRET)
            .query_async(node)
            .await?;
        Ok(NodeRecord {
            raw,
            otp_secret,
            deadline,
            secret,
        })
    }
}

async fn import_one<C: ConnectionLike>(
    conn: &mut C,
    keys: &AuthKeys,
    record: NodeRecord,
    dry_run: bool,
) -> Result<Imported, AuthError> {
    let NodeRecord {
        raw,
        otp_secret,
        deadline,
        secret,
    } = record;
    let skipped = |client: String, reason: String| Imported {
        client,
        outcome: "skipped",
        reason: Some(reason),
    };
    let client: ClientId = match raw.parse() {
        Ok(c) => c,
        Err(e) => return Ok(skipped(raw, format!("not a client id: {e}"))),
    };
    let secret = secret.unwrap_or_default();
    if !secret.is_empty()
        && let Err(e) = secret.parse::<bcrypt::HashParts>()
    {
        return Ok(skipped(
            raw,
            format!("secret is not a bcrypt hash we can verify ({e}); re-provision the device"),
        ));
    }
    if secret.is_empty() && otp_secret.as_deref().unwrap_or("").is_empty() {
        return Ok(skipped(raw, "neither otpSecret nor secret".into()));
    }
    let outcome: String = IMPORT_SCRIPT
        .key(keys.client(&client))
        .arg(otp_secret.unwrap_or_default())
        .arg(deadline.unwrap_or_default())
        .arg(&secret)
        .arg(if dry_run { "1" } else { "0" })
        .invoke_async(conn)
        .await?;
    let outcome = match (outcome.as_str(), secret.is_empty()) {
        ("exists", _) => "exists",
        (_, false) => "registered",
        (_, true) => "provisioned",
    };
    Ok(Imported {
        client: raw,
        outcome,
        reason: None,
    })
}
