//! Content negotiation for `/metrics`: OpenMetrics 1.0 when the scraper's `Accept` asks for it,
//! the Prometheus text format 0.0.4 otherwise. prometheus-client writes OpenMetrics only, so the
//! older format is derived from it: the two differ in a few lines, not in the samples.
//!
//! In OpenMetrics a counter family `x` has samples `x_total`; in 0.0.4 the family is named by the
//! sample (`# TYPE x_total counter`), and a parser of 0.0.4 (promtool's lint, for one) otherwise
//! sees an untyped `x_total` without help. `# UNIT` and `# EOF` do not exist in 0.0.4.

/// Whether an `Accept` header asks for OpenMetrics (at a quality above zero).
pub fn wants_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let refused =
            parts.any(|p| p.strip_prefix("q=").and_then(|q| q.parse::<f32>().ok()).is_some_and(|q| q <= 0.0));
        media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
    })
}

/// The OpenMetrics exposition `text` in the Prometheus text format 0.0.4.
pub fn to_prometheus_text(text: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_asks_for_openmetrics_and_curl_does_not() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(prometheus));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics(""));
        assert!(!wants_openmetrics("text/plain; version=0.0.4"));
        assert!(!wants_openmetrics("application/openmetrics-text; q=0"));
    }

    #[test]
    fn counters_are_named_by_their_samples_and_the_eof_goes() {
        let om = "# HELP dsr_x Things.\n# TYPE dsr_x counter\ndsr_x_total{k=\"v\"} 1\n\
                  # HELP dsr_g A gauge.\n# TYPE dsr_g gauge\n# UNIT dsr_g seconds\ndsr_g 2\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP dsr_x_total Things.\n# TYPE dsr_x_total counter\ndsr_x_total{k=\"v\"} 1\n\
             # HELP dsr_g A gauge.\n# TYPE dsr_g gauge\ndsr_g 2\n"
        );
    }
}
