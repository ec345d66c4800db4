//! Reading the chart's PromQL (its dashboard and alert rules) for the series it names: the
//! operator's unit tests and the e2e scrape both check that each one is exported.

use std::collections::BTreeSet;

/// The names of frugal's series a query mentions: its identifiers that start `frugal_`.
pub fn frugal_series(query: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    for c in query.chars().chain([' ']) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            if word.starts_with("frugal_") {
                names.insert(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    names
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_the_frugal_identifiers() {
        let q = r#"sum by (namespace) (rate(frugal_billed_cost_total{budget!=""}[5m])) / on() frugal_budget_limit_cost > 0.8"#;
        let names: Vec<String> = super::frugal_series(q).into_iter().collect();
        assert_eq!(names, ["frugal_billed_cost_total", "frugal_budget_limit_cost"]);
    }
}
