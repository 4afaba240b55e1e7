//! Unknown fields, found without a hand-kept schema, and the line a field path sits on.
//!
//! k8s-openapi's types are the schema: they keep every field the API defines and drop the rest.
//! An object decoded into its type and encoded again therefore holds exactly the fields of the
//! original that the API knows; a key of the original missing from that round trip (and not
//! `null`, which the API server accepts for any optional field) is an unknown field —
//! `fromm:` for `from:`, `podselector:` for `podSelector:` — and the API server rejects it
//! (`strict decoding error: unknown field "spec.ingress[0].fromm"`). So does zt.
//!
//! serde_yaml's values carry no positions, but its deserializer puts the line and column of the
//! current event on any error raised while it deserializes: [`locate`] walks a document's text
//! along a field path and raises one at the field, which gives the field's line.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_yaml::Value;

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A field path, printed as the API server prints them: `spec.ingress[0].from[1].podSelector`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    pub fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        Self(segs)
    }

    pub fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        Self(segs)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// The fields of `original` that `known` (the same object after a round trip through its type)
/// does not have, in document order.
pub fn unknown_fields(original: &Value, known: &Value) -> Vec<FieldPath> {
    let mut out = Vec::new();
    walk(original, known, &FieldPath::default(), &mut out);
    out
}

fn walk(original: &Value, known: &Value, at: &FieldPath, out: &mut Vec<FieldPath>) {
    match (original, known) {
        (Value::Mapping(o), Value::Mapping(k)) => {
            for (key, value) in o {
                if value.is_null() {
                    continue;
                }
                let name = match key {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                };
                match k.get(key) {
                    Some(kept) => walk(value, kept, &at.key(&name), out),
                    None => out.push(at.key(&name)),
                }
            }
        }
        (Value::Sequence(o), Value::Sequence(k)) if o.len() == k.len() => {
            for (i, (o, k)) in o.iter().zip(k).enumerate() {
                walk(o, k, &at.index(i), out);
            }
        }
        (Value::Tagged(o), _) => walk(&o.value, known, at, out),
        _ => {}
    }
}

/// Line and column (1-based) of the field at `path` in one YAML document, if it is there.
pub fn locate(document: serde_yaml::Deserializer<'_>, path: &FieldPath) -> Option<(usize, usize)> {
    let error = Walk { rest: &path.0 }.deserialize(document).err()?;
    if !error.to_string().contains(FOUND) {
        return None;
    }
    error.location().map(|at| (at.line(), at.column()))
}

/// The message [`Walk`] raises at its target.
const FOUND: &str = "zt: the field is here";

/// Descends along `rest`; raises [`FOUND`] at its end.
struct Walk<'a> {
    rest: &'a [Seg],
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.rest.first() {
            None => Err(de::Error::custom(FOUND)),
            Some(Seg::Key(_)) => d.deserialize_map(self),
            Some(Seg::Index(_)) => d.deserialize_seq(self),
        }
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping or a sequence")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Seg::Key(wanted), rest)) = self.rest.split_first() else {
            return Ok(());
        };
        while let Some(key) = map.next_key::<Value>()? {
            let matches = match &key {
                Value::String(s) => s == wanted,
                other => serde_yaml::to_string(other).is_ok_and(|s| s.trim() == wanted),
            };
            if !matches {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if rest.is_empty() {
                // At the key itself: the error carries the key's position.
                return Err(de::Error::custom(FOUND));
            }
            return map.next_value_seed(Walk { rest });
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Seg::Index(wanted), rest)) = self.rest.split_first() else {
            return Ok(());
        };
        for _ in 0..*wanted {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        match seq.next_element_seed(Walk { rest })? {
            Some(()) | None => Ok(()),
        }
    }

    // Anything else on the way (a scalar where the path expects more) means the path is not
    // in this document.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(segs: &[&str]) -> FieldPath {
        FieldPath(
            segs.iter()
                .map(|s| match s.parse() {
                    Ok(n) => Seg::Index(n),
                    Err(_) => Seg::Key((*s).to_owned()),
                })
                .collect(),
        )
    }

    #[test]
    fn unknown_fields_are_what_the_round_trip_lost_except_nulls() {
        let original: Value =
            serde_yaml::from_str("a: 1\nb: {c: 2, typo: 3}\nl: [{x: 1}, {y: 2}]\nn: null\n")
                .unwrap();
        let known: Value = serde_yaml::from_str("a: 1\nb: {c: 2}\nl: [{x: 1}, {}]\n").unwrap();
        let got: Vec<String> = unknown_fields(&original, &known)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["b.typo", "l[1].y"]);
    }

    #[test]
    fn locate_finds_the_line_of_a_nested_field() {
        let text = "kind: NetworkPolicy\nspec:\n  ingress:\n  - ports: []\n  - fromm:\n    - {}\n";
        let doc = serde_yaml::Deserializer::from_str(text);
        assert_eq!(
            locate(doc, &path(&["spec", "ingress", "1", "fromm"])).map(|(l, _)| l),
            Some(5)
        );
        let doc = serde_yaml::Deserializer::from_str(text);
        assert_eq!(locate(doc, &path(&["spec", "egress"])), None);
        let doc = serde_yaml::Deserializer::from_str(text);
        assert_eq!(locate(doc, &path(&["kind", "x"])), None);
    }
}
