//! Label selectors (`matchLabels` + `matchExpressions`), validated once and matched many times.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::index::Labels;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Requirement {
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A valid selector: the conjunction of its requirements. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    /// Validates a selector the way the API server does; the error says what is wrong.
    pub fn parse(selector: &LabelSelector) -> Result<Selector, String> {
        let mut reqs = Vec::new();
        for (k, v) in selector.match_labels.iter().flatten() {
            reqs.push(Requirement::In(k.clone(), BTreeSet::from([v.clone()])));
        }
        for expr in selector.match_expressions.iter().flatten() {
            let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
            let key = expr.key.clone();
            let req = match expr.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!(
                        "matchExpressions {key} {}: values must not be empty",
                        expr.operator
                    ));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!(
                        "matchExpressions {key} {}: values must be empty",
                        expr.operator
                    ));
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err(format!(
                        "matchExpressions {key}: unknown operator {other:?}"
                    ));
                }
            };
            reqs.push(req);
        }
        reqs.sort();
        reqs.dedup();
        Ok(Selector(reqs))
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|req| match req {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: (!values.is_empty())
                    .then(|| values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn operators() {
        let l = labels(&[("app", "web")]);
        let m = |s: LabelSelector| Selector::parse(&s).unwrap().matches(&l);
        assert!(m(expr("app", "In", &["web", "db"])));
        assert!(!m(expr("app", "In", &["db"])));
        assert!(m(expr("app", "NotIn", &["db"])));
        assert!(!m(expr("app", "NotIn", &["web"])));
        assert!(m(expr("tier", "NotIn", &["web"])));
        assert!(m(expr("app", "Exists", &[])));
        assert!(!m(expr("app", "DoesNotExist", &[])));
        assert!(m(expr("tier", "DoesNotExist", &[])));
        assert!(m(LabelSelector::default()));
    }

    #[test]
    fn invalid_selectors_are_errors() {
        assert!(Selector::parse(&expr("app", "Matches", &["x"])).is_err());
        assert!(Selector::parse(&expr("app", "In", &[])).is_err());
        assert!(Selector::parse(&expr("app", "Exists", &["x"])).is_err());
    }
}
