//! What every service's `GET /metrics` has in common: the registry it starts
//! from (`<service>_build_info` and the `process_*` series), and the answer in
//! the format the scraper asked for.
//!
//! prometheus-client writes OpenMetrics (counters typed without `_total`,
//! `# EOF` at the end). Served as the classic text format, Prometheus would
//! read every counter as untyped and `promtool check metrics` fails, so the
//! answer is negotiated: OpenMetrics with its own Content-Type to a scraper
//! that accepts it (Prometheus does), the classic format (0.0.4) to everyone
//! else (curl, promtool, older agents), converted by [`to_classic_text`].

use axum::http::HeaderMap;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::response::{IntoResponse as _, Response};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::process::ProcessCollector;

/// The commit the binaries were built from (12 hex digits), or `unknown`.
pub const COMMIT: &str = env!("LULA_COMMIT");

/// Content-Type of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content-Type of the classic Prometheus text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type BuildInfo = Family<[(&'static str, &'static str); 2], Gauge>;

/// A registry holding `<service>_build_info{version,commit} 1` and, on Linux,
/// the standard `process_*` series of this process. A service registers its
/// own metrics in `sub_registry_with_prefix(service)`.
pub fn registry(service: &str, version: &'static str) -> Registry {
    let mut root = Registry::default();
    let info = BuildInfo::default();
    info.get_or_create(&[("version", version), ("commit", COMMIT)])
        .set(1);
    root.sub_registry_with_prefix(service).register(
        "build_info",
        "The version and commit of this binary (always 1)",
        info,
    );
    root.register_collector(Box::new(ProcessCollector));
    root
}

/// The OpenMetrics text of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// `GET /metrics`: `openmetrics` (as [`render`] writes it) in the format the
/// request's `Accept` header prefers.
pub fn response(openmetrics: String, headers: &HeaderMap) -> Response {
    if wants_openmetrics(headers) {
        ([(CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], openmetrics).into_response()
    } else {
        (
            [(CONTENT_TYPE, TEXT_CONTENT_TYPE)],
            to_classic_text(&openmetrics),
        )
            .into_response()
    }
}

/// Whether `Accept` names OpenMetrics with a weight above zero. Prometheus
/// lists it first; the classic format is the fallback for everyone else.
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !zero
        })
}

/// OpenMetrics text as the classic Prometheus text format: counter families
/// take their samples' `_total` name, `info` families become gauges named
/// `<name>_info`, `unknown` ones `untyped`; `# UNIT` and `# EOF` go. Gauges
/// and histograms read the same in both.
pub fn to_classic_text(openmetrics: &str) -> String {
    let mut renamed = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            let classic = match kind {
                "counter" => Some((format!("{name}_total"), "counter")),
                "info" => Some((format!("{name}_info"), "gauge")),
                "unknown" => Some((name.to_owned(), "untyped")),
                _ => None,
            };
            if let Some(c) = classic {
                renamed.insert(name.to_owned(), c);
            }
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find(|p| line.starts_with(p));
        match meta.and_then(|p| Some((p, line[p.len()..].split_once(' ')?))) {
            Some((prefix, (name, rest))) if renamed.contains_key(name) => {
                let (classic, kind) = &renamed[name];
                let rest = if prefix == "# TYPE " { kind } else { rest };
                out.push_str(&format!("{prefix}{classic} {rest}\n"));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn counters_take_their_total_name_in_the_classic_format() {
        let mut r = registry("lula_test", "1.2.3");
        let c = Counter::<u64>::default();
        c.inc();
        r.sub_registry_with_prefix("lula_test")
            .register("things", "Things", c);
        let om = render(&r);
        assert!(om.contains("# TYPE lula_test_things counter"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");
        let text = to_classic_text(&om);
        assert!(
            text.contains("# TYPE lula_test_things_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# HELP lula_test_things_total Things"),
            "{text}"
        );
        assert!(text.contains("lula_test_things_total 1"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            text.contains(&format!(
                "lula_test_build_info{{version=\"1.2.3\",commit=\"{COMMIT}\"}} 1"
            )),
            "{text}"
        );
    }

    #[test]
    fn openmetrics_only_to_a_scraper_that_accepts_it() {
        let accept = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(ACCEPT, v.parse().unwrap());
            wants_openmetrics(&h)
        };
        // What Prometheus 2.x sends.
        assert!(accept(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(!accept("text/plain"));
        assert!(!accept("*/*"));
        assert!(!accept("application/openmetrics-text;q=0"));
        assert!(!wants_openmetrics(&HeaderMap::new()));
    }
}
