//! `deploy/grafana/lula.json` names only metrics the services really export:
//! every PromQL expression of the dashboard (panel targets and the template
//! variables' queries) is taken apart into the metric names it selects, and
//! each must be in the text exposition of a running hub, lula-auth or
//! lula-client. A renamed metric fails here, not on an on-call engineer's
//! empty graph.
//!
//! The extractor is a small PromQL tokenizer, not a parser: it skips strings,
//! label matchers `{…}`, ranges and subqueries `[…]`, Grafana variables
//! (`$hub`, `${DS_PROMETHEUS}`, `$__rate_interval`), numbers and durations,
//! keywords, and the label lists of `by`/`without`/`on`/`ignoring`/
//! `group_left`/`group_right`. What is left followed by `(` must be a known
//! function (an unknown one is reported like a missing metric); everything
//! else is a metric name.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use lula_auth::throttle::Limits;
use lula_e2e::{Cloud, CloudOptions, Device};
use lula_testkit::eventually;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

/// The dashboard, as checked in.
const DASHBOARD: &str = include_str!("../../deploy/grafana/lula.json");

/// Words that stand where an identifier could, and are not metrics.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
];

/// Clauses whose parenthesised list holds label names, not metrics.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// PromQL aggregation operators and functions (Prometheus 3).
const FUNCTIONS: &[&str] = &[
    // aggregations
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    // functions
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "deg",
    "delta",
    "deriv",
    "double_exponential_smoothing",
    "end",
    "exp",
    "floor",
    "histogram_avg",
    "histogram_count",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_sum",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "mad_over_time",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_by_label",
    "sort_by_label_desc",
    "sort_desc",
    "sqrt",
    "start",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "vector",
    "year",
];

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn is_ident(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

/// The index just past the string literal opening at `i`.
fn skip_string(b: &[u8], i: usize) -> usize {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() && b[j] != quote {
        // Backticks are raw strings; the others have escapes.
        j += if quote != b'`' && b[j] == b'\\' { 2 } else { 1 };
    }
    j + 1
}

/// The index just past the `close` matching the `open` at `i`, skipping
/// strings (a label value may hold a brace or a bracket).
fn skip_group(b: &[u8], i: usize, open: u8, close: u8) -> usize {
    let mut depth = 0;
    let mut j = i;
    while j < b.len() {
        match b[j] {
            b'"' | b'\'' | b'`' => {
                j = skip_string(b, j);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    j
}

/// The metric names a PromQL expression selects, in order of appearance,
/// plus any call of an unknown function.
fn metric_names(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let mut names = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if matches!(c, b'"' | b'\'' | b'`') {
            i = skip_string(b, i);
        } else if c == b'{' {
            i = skip_group(b, i, b'{', b'}');
        } else if c == b'[' {
            i = skip_group(b, i, b'[', b']');
        } else if c == b'#' {
            // A comment runs to the end of the line.
            i = b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |n| i + n);
        } else if c == b'$' {
            // A Grafana variable: `$name` or `${name}` (or `${name:format}`).
            i += 1;
            if b.get(i) == Some(&b'{') {
                i = skip_group(b, i, b'{', b'}');
            } else {
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            // A number (0.99, 1e-3, 0x1f) or a duration (5m, 1h30m).
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                let exponent =
                    matches!(b[i], b'e' | b'E') && matches!(b.get(i + 1), Some(b'+' | b'-'));
                i += if exponent { 2 } else { 1 };
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let mut next = i;
            while next < b.len() && b[next].is_ascii_whitespace() {
                next += 1;
            }
            // `sum by (le) (…)`: the grouping may stand between an
            // aggregation and its parenthesis.
            let rest = &expr[next..];
            let grouped = ["by", "without"].iter().any(|g| {
                rest.strip_prefix(g)
                    .is_some_and(|r| r.trim_start().starts_with('('))
            });
            let call = b.get(next) == Some(&b'(') || grouped;
            if call && LABEL_LISTS.contains(&word) {
                i = skip_group(b, next, b'(', b')');
                continue;
            }
            let known = if call {
                FUNCTIONS.contains(&word)
            } else {
                KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
            };
            if !known {
                names.push(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The PromQL in a Grafana Prometheus variable query: `label_values(selector,
/// label)` selects with its first argument; `label_values(label)`,
/// `label_names()` and `metrics(regex)` name no metric.
fn variable_promql(query: &str) -> Option<&str> {
    let query = query.trim();
    if let Some(args) = query.strip_prefix("label_values(") {
        let args = args.strip_suffix(')')?;
        return args.rsplit_once(',').map(|(selector, _label)| selector);
    }
    if let Some(expr) = query.strip_prefix("query_result(") {
        return expr.strip_suffix(')');
    }
    if query.starts_with("label_names(") || query.starts_with("metrics(") {
        return None;
    }
    Some(query)
}

/// Every `expr` of every panel target, anywhere in the dashboard (rows may
/// nest panels), and the PromQL of every query variable. Panics on a target
/// without an expression.
fn dashboard_promql(dashboard: &Value) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(targets) = map.get("targets") {
                    let targets = targets.as_array().expect("targets is an array");
                    for target in targets {
                        let expr = target["expr"].as_str().unwrap_or_else(|| {
                            panic!(
                                "a target of panel {:?} has no expr: {target}",
                                map.get("title")
                            )
                        });
                        assert!(
                            !expr.trim().is_empty(),
                            "empty expr in {:?}",
                            map.get("title")
                        );
                        out.push(expr.to_string());
                    }
                }
                for (key, v) in map {
                    if key != "targets" {
                        walk(v, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    let variables = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten();
    for var in variables.filter(|v| v["type"] == "query") {
        let query = match &var["query"] {
            Value::String(q) => q.as_str(),
            q => q["query"].as_str().expect("a query variable has a query"),
        };
        out.extend(variable_promql(query).map(str::to_string));
    }
    out
}

/// What a text exposition offers: metric families with their types, and
/// the sample names it carried.
#[derive(Default)]
struct Exported {
    families: HashMap<String, String>,
    samples: BTreeSet<String>,
}

impl Exported {
    fn add(&mut self, exposition: &str) {
        for line in exposition.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    self.families.insert(name.to_string(), kind.to_string());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                self.samples.insert(line[..end].to_string());
            }
        }
    }

    /// Whether a query can select `name`: a sample the exposition carried,
    /// or one its families' types put there (a labelled family may have no
    /// samples yet). Type-aware, so a gauge's `_total` or a counter's bare
    /// family name, which no scrape ever stores, do not pass.
    fn has(&self, name: &str) -> bool {
        self.samples.contains(name)
            || self.families.iter().any(|(family, kind)| {
                let Some(suffix) = name.strip_prefix(family.as_str()) else {
                    return false;
                };
                match kind.as_str() {
                    "counter" => matches!(suffix, "_total" | "_created"),
                    "histogram" => matches!(suffix, "_bucket" | "_sum" | "_count" | "_created"),
                    "summary" => matches!(suffix, "" | "_sum" | "_count" | "_created"),
                    "info" => suffix == "_info",
                    _ => suffix.is_empty(),
                }
            })
    }

    /// The names in `exprs` this exposition does not have, with the
    /// expression each came from.
    fn missing<'a>(&self, exprs: impl IntoIterator<Item = &'a str>) -> Vec<(String, String)> {
        exprs
            .into_iter()
            .flat_map(|e| metric_names(e).into_iter().map(move |n| (n, e.to_string())))
            .filter(|(name, _)| !self.has(name))
            .collect()
    }
}

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("deploy/grafana/lula.json is JSON")
}

/// The expositions of freshly made metrics, straight from the crates, with
/// one count in each labelled family (an empty family is not exported).
fn exported_by_the_crates() -> Exported {
    use lula_hub::metrics::HubMetrics;
    let hub = HubMetrics::default();
    HubMetrics::count(&hub.closed, "reason", "idle");
    let auth = lula_auth::metrics::AuthMetrics::default();
    auth.registrations.get_or_create(&[("outcome", "ok")]).inc();
    auth.logins.get_or_create(&[("outcome", "ok")]).inc();
    let mut exported = Exported::default();
    exported.add(&hub.render());
    exported.add(&auth.render());
    exported.add(&lula_client::metrics::Metrics::default().render());
    exported
}

#[test]
fn the_extractor_finds_metrics_and_skips_labels_functions_and_durations() {
    let expr = r#"histogram_quantile(0.99, sum by (le, reason) (rate(lula_hub_ingest_seconds_bucket{instance=~"$hub", le!="+Inf"}[$__rate_interval])))
        / on(instance) group_left(job) sum without (outcome) (increase(lula_auth_logins_total[5m] offset 1h))
        + bool 1e-3 * count(up{job='a}b'}) or vector(0) + avg_over_time(x:recorded:rate5m[1h:5m])
        and ${DS_PROMETHEUS} unless rate(lula_hub_frames_in_total[${__range}]) # le in a comment"#;
    assert_eq!(
        metric_names(expr),
        [
            "lula_hub_ingest_seconds_bucket",
            "lula_auth_logins_total",
            "up",
            "x:recorded:rate5m",
            "lula_hub_frames_in_total",
        ]
    );
    assert_eq!(
        variable_promql("label_values(lula_hub_connections{job=\"hub\"}, instance)"),
        Some("lula_hub_connections{job=\"hub\"}")
    );
    assert_eq!(variable_promql("label_values(instance)"), None);
}

#[test]
fn a_metric_the_services_do_not_export_is_reported() {
    let exported = exported_by_the_crates();
    let fine = r#"sum by (reason) (rate(lula_hub_closed_total{reason="idle"}[5m]))
        / histogram_quantile(0.5, sum by (le) (rate(lula_auth_bcrypt_seconds_bucket[5m])))
        + lula_client_upstream_lag_entries"#;
    assert!(
        exported.missing([fine]).is_empty(),
        "{:?}",
        exported.missing([fine])
    );

    let bogus = "sum(rate(lula_hub_entries_in_total[5m])) + sum(rate(lula_hub_bogus_total[5m]))";
    let names: Vec<_> = exported
        .missing([bogus])
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["lula_hub_bogus_total"]);

    // Type-aware: a gauge has no `_total`, a counter's samples are `_total`,
    // a histogram has no `_total`.
    for wrong in [
        "lula_hub_connections_total",
        "rate(lula_hub_frames_in[5m])",
        "rate(lula_auth_bcrypt_seconds_total[5m])",
    ] {
        assert_eq!(exported.missing([wrong]).len(), 1, "{wrong} passed");
    }
    // A misspelt function is not taken for one.
    assert_eq!(
        exported.missing(["rat(lula_hub_gaps_total[5m])"]),
        [(
            "rat".to_string(),
            "rat(lula_hub_gaps_total[5m])".to_string()
        )]
    );
}

#[test]
fn the_dashboard_is_json_with_panels_and_every_target_has_an_expr() {
    let dashboard = dashboard();
    let panels = dashboard["panels"].as_array().expect("panels is an array");
    assert!(!panels.is_empty());
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("a panel has an id")),
            "duplicate id"
        );
        if panel["type"] != "row" {
            let targets = panel["targets"].as_array();
            assert!(
                targets.is_some_and(|t| !t.is_empty()),
                "{} has no targets",
                panel["title"]
            );
            assert_eq!(
                panel["datasource"]["uid"], "${DS_PROMETHEUS}",
                "{}",
                panel["title"]
            );
        }
    }
    // Panics on a target without an expr.
    let exprs = dashboard_promql(&dashboard);
    assert!(exprs.len() > panels.len());
}

/// A text exposition fetched over HTTP, or `None` while it cannot be.
async fn scrape(url: &str) -> Option<String> {
    reqwest::get(url).await.ok()?.text().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_names_is_exported_by_a_running_system() {
    // Labelled families are exported from their first count on, so the
    // system is driven down every path the dashboard shows: renewals (short
    // tokens), a rate-limited login, a refused logout and upgrade, a close.
    let cloud = Cloud::start_with(CloudOptions {
        token_ttl: Duration::from_secs(4),
        auth_limits: Some(Limits {
            per_client: 1,
            ..Limits::default()
        }),
        ..CloudOptions::default()
    })
    .await;
    let otp = cloud.provision("dev-1").await;
    let mut device = Device::new(&cloud, "dev-1", &otp);
    let port = lula_testkit::free_port();
    device.config.metrics_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    device.start();
    device.produce(0, 20).await;
    for i in 0..3 {
        cloud.send_down("dev-1", &[("n", i.to_string())]).await;
    }

    let http = reqwest::Client::new();
    let auth = cloud.auth_url();
    let ghost = serde_json::json!({ "client": "ghost", "secret": "s".repeat(32) });
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = http.post(format!("{auth}/login")).json(&ghost).send().await;
        statuses.push(response.unwrap().status().as_u16());
    }
    assert!(
        statuses.contains(&429),
        "no login was rate-limited: {statuses:?}"
    );
    let logout = http.post(format!("{auth}/logout")).send().await.unwrap();
    assert_eq!(logout.status().as_u16(), 401);
    let hub_http = cloud.hub_url().replacen("ws://", "http://", 1);
    let upgrade = http.get(&hub_http).send().await.unwrap();
    assert!(upgrade.status().is_client_error(), "{}", upgrade.status());

    let hub = format!("{}/metrics", cloud.admin_url());
    let client = format!("http://127.0.0.1:{port}/metrics");
    let client_text = eventually("the device's counts and a renewal", WAIT, || {
        let client = client.clone();
        async move {
            let text = scrape(&client).await?;
            let done = text.contains("lula_client_upstream_entries_total 20")
                && text.contains("lula_client_downstream_entries_total 3")
                && !text.contains("lula_client_renewals_total 0");
            done.then_some(text)
        }
    })
    .await;
    device.stop().await.unwrap();
    let hub_text = eventually("the hub's counts and a close", WAIT, || {
        let hub = hub.clone();
        async move {
            let text = scrape(&hub).await?;
            let done = text.contains("lula_hub_entries_in_total 20")
                && text.contains("lula_hub_entries_out_total 3")
                && text.contains("lula_hub_renewals_total{")
                && text.contains("lula_hub_refused_total{")
                && text.contains("lula_hub_closed_total{");
            done.then_some(text)
        }
    })
    .await;
    let auth_text = scrape(&format!("{}/metrics", cloud.auth_admin_url()))
        .await
        .unwrap();
    for family in [
        "registrations",
        "logins",
        "renewals",
        "logouts",
        "rate_limited",
    ] {
        let sample = format!("lula_auth_{family}_total{{");
        assert!(auth_text.contains(&sample), "no {sample} in:\n{auth_text}");
    }

    let mut exported = Exported::default();
    for text in [&hub_text, &auth_text, &client_text] {
        exported.add(text);
    }
    let exprs = dashboard_promql(&dashboard());
    let named: BTreeSet<_> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    for prefix in ["lula_hub_", "lula_auth_", "lula_client_"] {
        assert!(
            named.iter().any(|n| n.starts_with(prefix)),
            "the dashboard shows nothing of {prefix}*"
        );
    }
    let missing = exported.missing(exprs.iter().map(String::as_str));
    assert!(
        missing.is_empty(),
        "the dashboard names metrics nobody exports:\n{}",
        missing
            .iter()
            .map(|(name, expr)| format!("  {name}  in  {expr}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The alert rules (deploy/prometheus/alerts.yml, also the PrometheusRule)
/// name only metrics the services export, besides Prometheus's own `up`.
#[test]
fn every_metric_the_alert_rules_name_is_exported() {
    let rules = include_str!("../../deploy/prometheus/alerts.yml");
    let exprs: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(str::trim)
        .collect();
    assert!(exprs.len() >= 10, "too few rules found: {exprs:?}");
    let mut exported = exported_by_the_crates();
    // Labelled families appear once counted; count one in each.
    let hub = lula_hub::metrics::HubMetrics::default();
    for family in [&hub.refused, &hub.renewals, &hub.closed] {
        family.get_or_create(&[("reason", "x")]).inc();
    }
    let auth = lula_auth::metrics::AuthMetrics::default();
    for family in [&auth.renewals, &auth.rate_limited, &auth.logouts] {
        family.get_or_create(&[("outcome", "x")]).inc();
    }
    exported.add(&hub.render());
    exported.add(&auth.render());
    exported.add("# TYPE up gauge\n");
    let missing = exported.missing(exprs.iter().copied());
    assert!(
        missing.is_empty(),
        "the alert rules name metrics nobody exports:\n{missing:?}"
    );
}
