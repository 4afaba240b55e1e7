//! The name and value formats the API server enforces (`k8s.io/apimachinery/pkg/util/validation`),
//! as predicates. Each returns `None` when the text is valid, else what is wrong with it.

/// A DNS-1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters): namespace names,
/// container names.
pub fn dns_label(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 63 {
        return Some(format!("{s:?} must be 1 to 63 characters"));
    }
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    (!ok).then(|| {
        format!(
            "{s:?} is not a DNS-1123 label (lowercase letters, digits and '-', starting and ending \
             with a letter or digit)"
        )
    })
}

/// A DNS-1123 subdomain (dot-separated labels, at most 253 characters): pod and policy names,
/// label-key prefixes.
pub fn dns_subdomain(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 253 {
        return Some(format!("{s:?} must be 1 to 253 characters"));
    }
    let ok = s.split('.').all(|part| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !part.starts_with('-')
            && !part.ends_with('-')
    });
    (!ok).then(|| {
        format!(
            "{s:?} is not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', each part \
             starting and ending with a letter or digit)"
        )
    })
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters.
fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A qualified name (`[prefix/]name`, prefix a DNS subdomain): label and annotation keys,
/// selector keys.
pub fn qualified_name(s: &str) -> Option<String> {
    let (prefix, name) = match s.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, s),
    };
    if let Some(why) = prefix.and_then(dns_subdomain) {
        return Some(format!("the prefix of {s:?}: {why}"));
    }
    (!is_name_part(name)).then(|| {
        format!(
            "{s:?} is not a qualified name (at most 63 letters, digits, '-', '_' or '.', starting \
             and ending with a letter or digit, optionally after a DNS subdomain and '/')"
        )
    })
}

/// A label value: empty, or a name part.
pub fn label_value(s: &str) -> Option<String> {
    (!s.is_empty() && !is_name_part(s)).then(|| {
        format!(
            "{s:?} is not a label value (empty, or at most 63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit)"
        )
    })
}

/// An IANA service name (a port name): at most 15 lowercase letters, digits and '-', at least
/// one letter, no leading, trailing or double '-'.
pub fn port_name(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    (!ok).then(|| {
        format!(
            "{s:?} is not a port name (1 to 15 lowercase letters, digits and '-', at least one \
             letter, no leading, trailing or double '-')"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_api_server() {
        for ok in ["a", "x-1", "0a"] {
            assert_eq!(dns_label(ok), None, "{ok}");
        }
        for bad in ["", "A", "-a", "a-", "a.b", &"a".repeat(64)] {
            assert!(dns_label(bad).is_some(), "{bad}");
        }
        assert_eq!(dns_subdomain("a.b-c.d"), None);
        for bad in ["a..b", ".a", "A.b", "a_b"] {
            assert!(dns_subdomain(bad).is_some(), "{bad}");
        }
        for ok in [
            "app",
            "App_1.x",
            "example.com/role",
            "kubernetes.io/metadata.name",
        ] {
            assert_eq!(qualified_name(ok), None, "{ok}");
        }
        for bad in ["", "-a", "a/", "/a", "Ex.com/a", "a b", &"a".repeat(64)] {
            assert!(qualified_name(bad).is_some(), "{bad}");
        }
        for ok in ["", "db", "v1.2_x"] {
            assert_eq!(label_value(ok), None, "{ok}");
        }
        for bad in ["-a", "a b", "a/b"] {
            assert!(label_value(bad).is_some(), "{bad}");
        }
        for ok in ["http", "serve-80-tcp", "h2c"] {
            assert_eq!(port_name(ok), None, "{ok}");
        }
        for bad in ["", "80", "HTTP", "a--b", "-http", "averyveryverylongname"] {
            assert!(port_name(bad).is_some(), "{bad}");
        }
    }
}
