//! `lula-auth import-node` (with `--dry-run`) and the fallback
//! `lula-auth provision --from-file`, run as the binary against a real Redis
//! holding records exactly as the Node lula-auth writes them
//! (`lula:client:<client>:h`: `otpSecret`, `regDeadline` until registered,
//! `secret` = bcrypt of the device's secret by the Node `bcrypt` package).

mod common;

use std::process::{Command, Output};

use common::{TestApp, spawn_app, spawn_app_with};
use lula_auth::Config;
use serde_json::json;

fn lula_auth(app: &TestApp, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lula-auth"))
        .args(args)
        .env("REDIS_URL", app.redis.url())
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A bcrypt hash as the Node `bcrypt` package writes it (`$2b$`), or as its
/// older releases did (`$2a$`): same hash, other prefix.
fn node_bcrypt(secret: &str, version: bcrypt::Version) -> String {
    bcrypt::hash_with_result(secret, 4)
        .unwrap()
        .format_for_version(version)
}

#[tokio::test]
async fn a_device_registered_with_the_node_auth_logs_in_to_ours_after_the_import() {
    // The Node examples' secret is 11 bytes: the fleet keeps it with a
    // lowered minimum.
    let app = spawn_app_with(|c| Config {
        min_secret_len: 8,
        ..c
    })
    .await;
    let otp = lula_auth::otp::generate_secret();
    app.hset(
        "lula:client:dev-1:h",
        &[
            ("otpSecret", &otp),
            ("secret", &node_bcrypt("lula-secret", bcrypt::Version::TwoB)),
        ],
    )
    .await;
    app.hset(
        "lula:client:dev-2:h",
        &[
            ("otpSecret", &otp),
            (
                "secret",
                &node_bcrypt("another-secret-2", bcrypt::Version::TwoA),
            ),
        ],
    )
    .await;
    // Provisioned there, never registered: comes over provisioned.
    let deadline = (common::system_now() + 3600) * 1000;
    app.hset(
        "lula:client:dev-3:h",
        &[("otpSecret", &otp), ("regDeadline", &deadline.to_string())],
    )
    .await;
    let before = app.client_record("dev-1").await;
    assert!(before.is_empty());

    let dry = lula_auth(&app, &["import-node", "--dry-run"]);
    assert!(dry.status.success(), "{dry:?}");
    let out = stdout(&dry);
    assert!(out.contains("dev-1: would import (registered)"), "{out}");
    assert!(out.contains("dev-3: would import (provisioned)"), "{out}");
    assert!(out.contains("nothing written"), "{out}");
    assert!(
        app.client_record("dev-1").await.is_empty(),
        "a dry run wrote"
    );
    let login = app
        .login(json!({ "client": "dev-1", "secret": "lula-secret" }))
        .await;
    login.assert_error(403, "not_registered");

    let run = lula_auth(&app, &["import-node"]);
    assert!(run.status.success(), "{run:?}");
    assert!(
        stdout(&run).contains("3 Node record(s); 3 imported"),
        "{}",
        stdout(&run)
    );

    // The Node client logs in as it always did: form-encoded, with an otp.
    let code = app.otp(&otp);
    let reply = app
        .post_form(
            "/login",
            &[
                ("client", "dev-1"),
                ("otp", &code),
                ("secret", "lula-secret"),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.json()["sessionToken"].is_string());
    let reply = app
        .login(json!({ "client": "dev-2", "secret": "another-secret-2" }))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let wrong = app
        .login(json!({ "client": "dev-1", "secret": "not-the-secret" }))
        .await;
    wrong.assert_error(401, "wrong_secret");
    // dev-3 registers here as it would have there.
    let reply = app
        .register(json!({ "client": "dev-3", "otp": app.otp(&otp), "secret": "dev-3-own-secret" }))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    // The Node records are as they were.
    let node: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg("lula:client:dev-1:h")
        .query_async(&mut app.conn.clone())
        .await
        .unwrap();
    assert_eq!(node.len(), 2);
}

#[tokio::test]
async fn unverifiable_records_are_skipped_ours_are_kept_and_a_second_run_changes_nothing() {
    let app = spawn_app().await;
    let otp = lula_auth::otp::generate_secret();
    // A sha1 hex where a bcrypt hash should be: we cannot verify it.
    app.hset(
        "lula:client:dev-sha:h",
        &[
            ("otpSecret", &otp),
            ("secret", "5baa61e4c9b93f3f0682250b6cf8331b7ee68fd8"),
        ],
    )
    .await;
    let mine = app
        .register_device("dev-mine", &common::secret("dev-mine"))
        .await;
    app.hset(
        "lula:client:dev-mine:h",
        &[
            ("otpSecret", &otp),
            (
                "secret",
                &node_bcrypt("node-secret-xyz!", bcrypt::Version::TwoB),
            ),
        ],
    )
    .await;
    let ours_before = app.client_record("dev-mine").await;

    let run = lula_auth(&app, &["import-node"]);
    assert!(run.status.success(), "{run:?}");
    let out = stdout(&run);
    assert!(
        out.contains("dev-sha: skipped: secret is not a bcrypt hash"),
        "{out}"
    );
    assert!(out.contains("dev-mine: kept ours"), "{out}");
    assert!(out.contains("provision --from-file"), "{out}");
    assert!(app.client_record("dev-sha").await.is_empty());
    assert_eq!(app.client_record("dev-mine").await, ours_before);
    assert_eq!(mine.client.as_str(), "dev-mine");

    let again = lula_auth(&app, &["import-node"]);
    assert!(again.status.success(), "{again:?}");
    assert!(stdout(&again).contains("0 imported"), "{}", stdout(&again));
    assert!(app.client_record("dev-sha").await.is_empty());
    assert_eq!(app.client_record("dev-mine").await, ours_before);
}

#[tokio::test]
async fn provision_from_file_prints_one_secret_per_device_and_reports_refusals() {
    let app = spawn_app().await;
    app.register_device("dev-b", &common::secret("dev-b")).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.txt");
    std::fs::write(&file, "# the fleet\ndev-a\n\ndev-b\ndev-c\n").unwrap();
    let out = lula_auth(&app, &["provision", "--from-file", file.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(
        !out.status.success(),
        "dev-b was registered: must be reported"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("dev-b: already registered"),
        "{out:?}"
    );
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows[0], ["client", "otpSecret", "regDeadline"]);
    assert_eq!(rows.len(), 3, "{text}");
    for (row, client) in rows[1..].iter().zip(["dev-a", "dev-c"]) {
        assert_eq!(row[0], client);
        let reply = app
            .register(json!({ "client": client, "otp": app.otp(row[1]), "secret": common::secret(client) }))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    // With --force, the registered one is provisioned again too.
    let forced = lula_auth(
        &app,
        &[
            "provision",
            "--force",
            "--from-file",
            file.to_str().unwrap(),
        ],
    );
    assert!(forced.status.success(), "{forced:?}");
    assert_eq!(stdout(&forced).lines().count(), 4);
}
