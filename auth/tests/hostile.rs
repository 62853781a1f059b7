//! Hostile HTTP against a real lula-auth: bodies that are not UTF-8, nested past
//! any parser's patience, with duplicate fields, huge numbers or the wrong JSON
//! types; wrong methods and paths; bodies over the limit however they are
//! framed; bodies that never finish. Every answer is a 4xx with the documented
//! JSON error (`{"code", "message"}`), never a 500 or a non-JSON body, and none
//! of them registers anything. (`api.rs` covers the ordinary malformed cases.)

mod common;

use std::time::Duration;

use common::{TestApp, secret, spawn_app, spawn_app_with};
use lula_auth::Config;
use lula_protocol::keys::fields;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Hang guard for anything lula-auth must do by itself.
const HANG_GUARD: Duration = Duration::from_secs(10);

const JSON: Option<&str> = Some("application/json");
const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

/// One request of a table and the error it must get.
struct Row {
    name: &'static str,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn post(
    name: &'static str,
    path: &str,
    content_type: Option<&'static str>,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
) -> Row {
    Row {
        name,
        method: Method::POST,
        path: path.into(),
        content_type,
        body: body.into(),
        status,
        code,
    }
}

/// Sends a row's request.
async fn send(app: &TestApp, row: &Row) -> common::Reply {
    if row.method == Method::POST {
        return app
            .post_raw(&row.path, row.content_type, row.body.clone())
            .await;
    }
    let mut req = reqwest::Client::new().request(row.method.clone(), app.url(&row.path));
    if let Some(ct) = row.content_type {
        req = req.header(reqwest::header::CONTENT_TYPE, ct);
    }
    let res = tokio::time::timeout(HANG_GUARD, req.body(row.body.clone()).send())
        .await
        .expect("no answer")
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    common::Reply {
        status,
        headers,
        text,
    }
}

/// What a refused request must not have changed: the provisioned device's
/// record and the names of all keys (no session, no client record), leaving
/// out the verification key lula-auth publishes by itself at start.
async fn state(app: &TestApp) -> (std::collections::HashMap<String, String>, Vec<String>) {
    (app.client_record("dev-1").await, key_names(app).await)
}

async fn key_names(app: &TestApp) -> Vec<String> {
    let published = app.keys.verify_key("");
    let mut names: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut app.conn.clone())
        .await
        .unwrap();
    names.retain(|k| !k.starts_with(&published));
    names.sort();
    names
}

/// Runs `rows` against `app`: each gets its status and JSON error, and
/// changes nothing in Redis.
async fn run(app: &TestApp, rows: Vec<Row>) {
    for row in rows {
        let before = state(app).await;
        let reply = send(app, &row).await;
        let name = format!("{} {} ({})", row.method, row.path, row.name);
        assert_ne!(reply.status, 500, "{name}: {}", reply.text);
        if row.method == Method::HEAD {
            assert_eq!(reply.status, row.status, "{name}");
        } else {
            assert_eq!(reply.status, row.status, "{name}: {}", reply.text);
            reply.assert_error(row.status, row.code);
        }
        assert_eq!(state(app).await, before, "{name}: Redis changed");
    }
}

/// `n` levels of `open`, a scalar, and (when `balanced`) the closing brackets.
fn nested(open: &str, close: &str, n: usize, balanced: bool) -> String {
    format!(
        "{}0{}",
        open.repeat(n),
        if balanced { close.repeat(n) } else { "".into() }
    )
}

/// A provisioned `dev-1`, and its current code.
async fn provisioned() -> (TestApp, String) {
    let app = spawn_app().await;
    let p = app.provision("dev-1").await;
    let code = app.otp(&p.otp_secret);
    (app, code)
}

#[tokio::test]
async fn hostile_bodies_get_4xx_json_and_register_nothing() {
    let (app, code) = provisioned().await;
    let s = secret("dev-1");
    let mut rows = Vec::new();
    for path in ["/register", "/login"] {
        rows.extend([
            // Not UTF-8.
            post(
                "invalid UTF-8 in a JSON string",
                path,
                JSON,
                [
                    &br#"{"client":"dev-1"#[..],
                    &[0xff, 0xfe],
                    format!(r#"","otp":"{code}","secret":"{s}"}}"#).as_bytes(),
                ]
                .concat(),
                400,
                "bad_request",
            ),
            post(
                "invalid UTF-8 outside strings",
                path,
                JSON,
                [
                    &b"{\xff"[..],
                    format!(r#""client":"dev-1","secret":"{s}"}}"#).as_bytes(),
                ]
                .concat(),
                400,
                "bad_request",
            ),
            post(
                "invalid UTF-8 in a form, percent-encoded",
                path,
                FORM,
                format!("client=dev-1%FF%FE&otp={code}&secret={s}"),
                400,
                "bad_request",
            ),
            post(
                "invalid UTF-8 in a form, raw",
                path,
                FORM,
                [
                    &b"client=dev-1\xff&otp="[..],
                    code.as_bytes(),
                    b"&secret=",
                    s.as_bytes(),
                ]
                .concat(),
                400,
                "bad_request",
            ),
            post(
                "UTF-16 JSON",
                path,
                JSON,
                json!({"client": "dev-1", "otp": code, "secret": s})
                    .to_string()
                    .encode_utf16()
                    .flat_map(u16::to_le_bytes)
                    .collect::<Vec<u8>>(),
                400,
                "bad_request",
            ),
            // Nested far past the recursion limit, balanced or not.
            post(
                "body nested 5,000 arrays deep",
                path,
                JSON,
                nested("[", "]", 5_000, true),
                400,
                "bad_request",
            ),
            post(
                "body nested 1,000 objects deep, unbalanced",
                path,
                JSON,
                nested(r#"{"client":"#, "}", 1_000, false),
                400,
                "bad_request",
            ),
            post(
                "client nested 5,000 deep",
                path,
                JSON,
                format!(
                    r#"{{"client":{},"otp":"{code}","secret":"{s}"}}"#,
                    nested("[", "]", 5_000, true)
                ),
                400,
                "bad_request",
            ),
            // Duplicate fields.
            post(
                "client given twice in JSON",
                path,
                JSON,
                format!(r#"{{"client":"dev-1","client":"dev-2","otp":"{code}","secret":"{s}"}}"#),
                400,
                "bad_request",
            ),
            post(
                "secret given twice in JSON",
                path,
                JSON,
                format!(r#"{{"client":"dev-1","otp":"{code}","secret":"{s}","secret":"{s}"}}"#),
                400,
                "bad_request",
            ),
            post(
                "client given twice in a form",
                path,
                FORM,
                format!("client=dev-1&client=dev-2&otp={code}&secret={s}"),
                400,
                "bad_request",
            ),
            // Numbers where strings go, and numbers no type holds.
            post(
                "client is a huge number",
                path,
                JSON,
                format!(r#"{{"client":1e400,"otp":"{code}","secret":"{s}"}}"#),
                400,
                "bad_request",
            ),
            post(
                "secret is a number",
                path,
                JSON,
                format!(r#"{{"client":"dev-1","otp":"{code}","secret":12345678901234567890}}"#),
                400,
                "bad_request",
            ),
            // The wrong JSON types for the whole body and its fields.
            post("body is null", path, JSON, "null", 400, "bad_request"),
            post(
                "body is a string",
                path,
                JSON,
                r#""dev-1""#,
                400,
                "bad_request",
            ),
            post("body is a number", path, JSON, "7", 400, "bad_request"),
            post(
                "client is an object",
                path,
                JSON,
                format!(r#"{{"client":{{"id":"dev-1"}},"otp":"{code}","secret":"{s}"}}"#),
                400,
                "bad_request",
            ),
            post(
                "secret is an array",
                path,
                JSON,
                format!(r#"{{"client":"dev-1","otp":"{code}","secret":["{s}"]}}"#),
                400,
                "bad_request",
            ),
            post(
                "client is null",
                path,
                JSON,
                format!(r#"{{"client":null,"otp":"{code}","secret":"{s}"}}"#),
                400,
                "bad_request",
            ),
            post(
                "client with a NUL",
                path,
                JSON,
                format!(r#"{{"client":"dev-1\u0000","otp":"{code}","secret":"{s}"}}"#),
                400,
                "bad_request",
            ),
            post("empty JSON body", path, JSON, "", 400, "bad_request"),
            post("empty body, no type", path, None, "", 400, "bad_request"),
            post(
                "JSON sent as a form",
                path,
                FORM,
                json!({"client": "dev-1", "otp": code, "secret": s}).to_string(),
                400,
                "bad_request",
            ),
        ]);
    }
    // The OTP: huge, fractional and negative numbers, and the wrong types.
    for (name, otp) in [
        ("otp beyond f64", "1e400"),
        ("otp beyond u64", "123456789012345678901234567890"),
        ("otp fractional", "123456.5"),
        ("otp as a float", "123456.0"),
        ("otp as an exponent", "1.23456e5"),
        ("otp negative zero", "-0"),
        ("otp is an array", "[123456]"),
        ("otp is an object", r#"{"code":"123456"}"#),
        ("otp is a bool", "true"),
        ("otp is null", "null"),
    ] {
        rows.push(post(
            name,
            "/register",
            JSON,
            format!(r#"{{"client":"dev-1","otp":{otp},"secret":"{s}"}}"#),
            400,
            "bad_request",
        ));
    }
    // Logout and renew: the token in the body, of the wrong types.
    for (name, body) in [
        (
            "sessionToken is a number",
            r#"{"sessionToken":5}"#.to_owned(),
        ),
        (
            "sessionToken nested deep",
            format!(r#"{{"sessionToken":{}}}"#, nested("[", "]", 5_000, true)),
        ),
        (
            "sessionToken given twice",
            r#"{"sessionToken":"a","sessionToken":"b"}"#.into(),
        ),
        ("token body is null", "null".into()),
    ] {
        for path in ["/logout", "/renew"] {
            rows.push(post(name, path, JSON, body.clone(), 400, "bad_request"));
        }
    }
    run(&app, rows).await;
}

#[tokio::test]
async fn hostile_tokens_at_logout_and_renew_get_401_json() {
    let app = spawn_app().await;
    let long = "x".repeat(12_000);
    let rows = [
        ("Bearer with only spaces", "Bearer    ".to_owned(), None),
        ("Basic instead of Bearer", "Basic aGk6dGhlcmU=".into(), None),
        ("garbage", "Bearer a.b.c".into(), None),
        ("12 KB of garbage", format!("Bearer {long}"), None),
        (
            "alg none",
            format!(
                "Bearer {}.{}.",
                b64(r#"{"alg":"none","typ":"JWT"}"#),
                b64(r#"{"sub":"dev-1","sid":"x","exp":99999999999}"#)
            ),
            None,
        ),
        (
            "a garbage header beats a body token",
            "Bearer nope".into(),
            Some(r#"{"sessionToken":"also-nope"}"#),
        ),
        (
            "empty token in the body",
            String::new(),
            Some(r#"{"sessionToken":""}"#),
        ),
        (
            "garbage token in the body",
            String::new(),
            Some(r#"{"token":"x.y.z"}"#),
        ),
    ];
    for ((name, auth, body), path) in rows
        .into_iter()
        .flat_map(|row| [(row.clone(), "/logout"), (row, "/renew")])
    {
        let name = format!("{path} {name}");
        let mut req = reqwest::Client::new().post(app.url(path));
        if !auth.is_empty() {
            req = req.header(reqwest::header::AUTHORIZATION, auth);
        }
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let res = req.send().await.unwrap();
        let reply = common::Reply {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            text: res.text().await.unwrap(),
        };
        assert_eq!(reply.status, 401, "{name}: {}", reply.text);
        reply.assert_error(401, "unauthorized");
    }
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn wrong_methods_and_paths_get_json_405_and_404() {
    let (app, _) = provisioned().await;
    let mut rows = Vec::new();
    let extension = Method::from_bytes(b"FROB").unwrap();
    for path in ["/register", "/login", "/logout", "/renew"] {
        for method in [
            Method::GET,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
            extension.clone(),
        ] {
            rows.push(Row {
                name: "wrong method",
                method,
                path: path.into(),
                content_type: JSON,
                body: br#"{"client":"dev-1"}"#.to_vec(),
                status: 405,
                code: "method_not_allowed",
            });
        }
        rows.push(Row {
            name: "HEAD of a POST route",
            method: Method::HEAD,
            path: path.into(),
            content_type: None,
            body: Vec::new(),
            status: 405,
            code: "method_not_allowed",
        });
    }
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        rows.push(Row {
            name: "wrong method",
            method,
            path: "/healthz".into(),
            content_type: None,
            body: Vec::new(),
            status: 405,
            code: "method_not_allowed",
        });
    }
    for path in [
        "/login/",
        "//login",
        "/LOGIN",
        "/login%00",
        "/register.json",
    ] {
        rows.push(post(
            "no such path",
            path,
            JSON,
            r#"{"client":"dev-1"}"#,
            404,
            "not_found",
        ));
    }
    let long_path = format!("/{}", "a".repeat(8_000));
    rows.push(post(
        "an 8 KB path",
        &long_path,
        JSON,
        "{}",
        404,
        "not_found",
    ));
    run(&app, rows).await;
}

// ---------------------------------------------------------------------------
// Raw HTTP: framings a well-behaved client library would not send.

/// Sends `request` on a fresh connection and reads one answer: (status,
/// body). Bodies of lula-auth's answers carry a `Content-Length`.
async fn raw(app: &TestApp, request: &[u8]) -> (u16, String) {
    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    tokio::time::timeout(HANG_GUARD, read_answer(&mut socket))
        .await
        .expect("no answer from lula-auth")
}

async fn read_answer(socket: &mut tokio::net::TcpStream) -> (u16, String) {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await.unwrap_or(0);
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length || n == 0 {
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
                return (status, body.to_owned());
            }
        }
        assert!(n > 0, "connection closed without an answer: {text:?}");
    }
}

fn assert_json_error(status: u16, body: &str, want: u16, code: &str, name: &str) {
    assert_eq!(status, want, "{name}: {body}");
    let v: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{name}: {status} with a non-JSON body ({e}): {body:?}"));
    assert_eq!(v["code"], code, "{name}: {v}");
    assert!(v["message"].is_string(), "{name}: {v}");
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_however_they_are_framed() {
    let app = spawn_app_with(|c| Config {
        max_body_bytes: 1024,
        ..c
    })
    .await;
    let before = key_names(&app).await;
    let big = format!(r#"{{"client":"dev-1","secret":"{}"}}"#, "x".repeat(4096));
    for path in ["/register", "/login", "/logout", "/renew"] {
        // Chunked: no length up front, the limit is hit while reading.
        let mut chunked = format!(
            "POST {path} HTTP/1.1\r\nHost: auth\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        for chunk in big.as_bytes().chunks(500) {
            chunked.push_str(&format!(
                "{:x}\r\n{}\r\n",
                chunk.len(),
                String::from_utf8_lossy(chunk)
            ));
        }
        chunked.push_str("0\r\n\r\n");
        let (status, body) = raw(&app, chunked.as_bytes()).await;
        assert_json_error(
            status,
            &body,
            413,
            "payload_too_large",
            &format!("{path} chunked"),
        );
        // A length over the limit, and more than the limit sent.
        let announced = format!(
            "POST {path} HTTP/1.1\r\nHost: auth\r\nContent-Type: application/json\r\n\
             Content-Length: 1000000000\r\nConnection: close\r\n\r\n{big}"
        );
        let (status, body) = raw(&app, announced.as_bytes()).await;
        assert_json_error(
            status,
            &body,
            413,
            "payload_too_large",
            &format!("{path} announced"),
        );
    }
    assert_eq!(key_names(&app).await, before);
}

/// The accept loop's header read timeout covers the request head only; a
/// client that sent a complete head announcing a body and then never sent it
/// would hold its connection (and one of the `max_http_connections` slots)
/// for as long as it liked, so enough such clients would lock everyone out.
/// lula-auth must give up on the body by itself.
#[tokio::test]
async fn a_body_that_never_finishes_is_cut_off() {
    let app = spawn_app_with(|mut c| {
        c.serve.header_read_timeout = Duration::from_millis(500);
        c
    })
    .await;
    let cases = [
        ("/register", "100", "{\"client\":"),
        ("/login", "100", "{\"client\":"),
        ("/logout", "100", "{\"sessionToken\":"),
        ("/renew", "100", "{\"sessionToken\":"),
        // Over the body limit, announced, nothing sent.
        ("/login", "1000000000", ""),
    ];
    let slow = cases.map(|(path, length, start)| {
        let addr = app.addr;
        tokio::spawn(async move {
            let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: auth\r\nContent-Type: application/json\r\n\
                 Content-Length: {length}\r\n\r\n{start}"
            );
            socket.write_all(head.as_bytes()).await.unwrap();
            // Never sends the rest; the server must give up by itself.
            let mut answer = Vec::new();
            let read = tokio::time::timeout(HANG_GUARD, socket.read_to_end(&mut answer)).await;
            (
                path,
                read.is_ok(),
                String::from_utf8_lossy(&answer).into_owned(),
            )
        })
    });
    for task in slow {
        let (path, closed, answer) = task.await.unwrap();
        assert!(
            closed,
            "{path}: lula-auth waited {HANG_GUARD:?} for a body that never came"
        );
        // If it answers before hanging up, the answer is a JSON 4xx.
        if let Some((head, body)) = answer.split_once("\r\n\r\n") {
            let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
            assert!((400..500).contains(&status), "{path}: {answer}");
            let v: Value = serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("{path}: non-JSON {status} ({e}): {body:?}"));
            assert!(
                v["code"].is_string() && v["message"].is_string(),
                "{path}: {v}"
            );
        }
    }
}

/// serde's derived `Deserialize` also reads a struct from a JSON array,
/// positionally, so without a guard `["dev-1", "<otp>", "<secret>"]` would
/// register the device, though the API takes objects (`{client, otp, secret}`)
/// or forms.
#[tokio::test]
async fn json_arrays_are_not_request_bodies() {
    let (app, code) = provisioned().await;
    let s = secret("dev-1");
    let rows = vec![
        post(
            "register as an array",
            "/register",
            JSON,
            json!(["dev-1", code, s]).to_string(),
            400,
            "bad_request",
        ),
        post(
            "login as an array",
            "/login",
            JSON,
            json!(["dev-1", s]).to_string(),
            400,
            "bad_request",
        ),
    ];
    run(&app, rows).await;
    assert!(
        !app.client_record("dev-1")
            .await
            .contains_key(fields::SECRET),
        "an array registered the device"
    );
}

/// HTTP the server library refuses before lula-auth's routes see it: a 4xx
/// (hyper's own, with an empty body: the JSON contract starts at the router)
/// and a closed connection, never a 5xx or a hang.
#[tokio::test]
async fn malformed_http_gets_a_4xx_and_a_closed_connection() {
    let app = spawn_app().await;
    let many_headers: String = (0..200).map(|i| format!("X-{i}: y\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a 70 KB path",
            format!(
                "POST /{} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
                "a".repeat(70_000)
            )
            .into_bytes(),
        ),
        (
            "a 500 KB header",
            format!(
                "POST /login HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n",
                "b".repeat(500_000)
            )
            .into_bytes(),
        ),
        (
            "200 headers",
            format!("POST /login HTTP/1.1\r\nHost: a\r\n{many_headers}Content-Length: 0\r\n\r\n")
                .into_bytes(),
        ),
        ("not a request line", b"GARBAGE\r\n\r\n".to_vec()),
        (
            "a header name with a space",
            b"POST /login HTTP/1.1\r\nHost: a\r\nBad Header: x\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
        ),
    ];
    for (name, request) in cases {
        let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let _ = socket.write_all(&request).await;
        let mut answer = Vec::new();
        tokio::time::timeout(HANG_GUARD, socket.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("{name}: the connection stayed open"))
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        let status: u16 = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no status in {answer:?}"));
        assert!((400..500).contains(&status), "{name}: {answer}");
    }
}
