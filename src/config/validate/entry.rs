//! Reading one section entry into its raw serde type, one problem per
//! mistake.
//!
//! serde stops at the first unknown or mistyped key, anywhere inside the
//! entry (a typo in the third backend of a pool), and its message names
//! neither the line nor the path. The entry is therefore read from the
//! spanned `toml_edit` tree of the file: the error's span finds the key at
//! fault, the problem is reported at that key with its full path and a fix,
//! the key is dropped and the entry read again. So one typo gives one
//! problem at its own line, and the rest of the entry (its name, its other
//! backends) is still read and checked. Later checks stay quiet about a
//! key dropped here ([`Checker::dropped`]).

use std::collections::HashMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml_edit::{Item, Value};

use super::Checker;

impl Checker<'_> {
    /// Deserialize one entry of a section (`t`, as the skeleton read it),
    /// reporting each serde problem at its key and reading the rest.
    pub(super) fn entry<T: for<'de> Deserialize<'de> + Default>(
        &mut self,
        t: &Spanned<toml::Table>,
        path: &str,
    ) -> T {
        if let Ok(raw) = T::deserialize(toml::Value::Table(t.get_ref().clone())) {
            return raw;
        }
        let span = t.span();
        let found = self.spanned_entry(&span, path);
        let named;
        let path = match (path.split_once('['), t.get_ref().get("name")) {
            (Some((section, _)), Some(toml::Value::String(name))) => {
                named = format!("{section} {name:?}");
                named.as_str()
            }
            _ => path,
        };
        let Some(mut value) = found else {
            self.report(&span, path, None, "cannot read this section", TYPE_FIX);
            return T::default();
        };
        for retry in 0.. {
            // Each retry reads the whole entry again: past the listed
            // problems, or past MAX_RETRIES in one entry, stop, so that a
            // table of 100 000 unknown keys is not read 100 000 times.
            if self.problems.len() >= super::MAX_PROBLEMS || retry == MAX_RETRIES {
                if retry == MAX_RETRIES {
                    self.report(
                        &span,
                        path,
                        None,
                        format!(
                            "more than {MAX_RETRIES} keys of this section are unknown or mistyped"
                        ),
                        "correct the keys listed above and run `vipd check` again",
                    );
                } else {
                    self.unlisted += 1;
                }
                self.skipped = true;
                self.dropped.entry(span.start).or_default().push(ALL.into());
                return T::default();
            }
            let err = match T::deserialize(serde::de::IntoDeserializer::into_deserializer(
                value.clone(),
            )) {
                Ok(raw) => return raw,
                Err(e) => e,
            };
            let msg = err.message().trim().to_string();
            let found = err.span().and_then(|at| drop_key(&mut value, &at, ""));
            let Some((rel, offset)) = found else {
                self.report(&span, path, None, msg, TYPE_FIX);
                return T::default();
            };
            let field = format!("{path}.{rel}");
            let (problem, fix, meant) = explain(&msg);
            self.report_at(offset, field, problem, fix);
            if let Some(meant) = meant {
                // `adress` dropped: `address` is not missing, it is misspelled
                let head = rel.rsplit_once('.').map_or("", |(head, _)| head);
                let sep = if head.is_empty() { "" } else { "." };
                let meant = format!("{head}{sep}{meant}");
                self.dropped.entry(span.start).or_default().push(meant);
            }
            self.dropped.entry(span.start).or_default().push(rel);
        }
        T::default()
    }

    /// The entry spanning `span` in the spanned tree, as a value (`[ipvs]`
    /// has no span of its own: it is found by its name).
    fn spanned_entry(&mut self, span: &Range<usize>, path: &str) -> Option<Value> {
        if self.doc.is_none() {
            let doc = toml_edit::ImDocument::parse(self.src).ok();
            self.entries = doc.as_ref().map(entries).unwrap_or_default();
            self.doc = Some(doc);
        }
        let doc = self.doc.as_ref()?.as_ref()?;
        if !path.contains('[') {
            return doc.get(path).and_then(|item| as_value(item.clone()));
        }
        let (key, i) = self.entries.get(&span.start)?;
        match doc.get(key)? {
            Item::ArrayOfTables(a) => a
                .get(*i)
                .map(|t| Value::InlineTable(t.clone().into_inline_table())),
            Item::Value(Value::Array(a)) => a.get(*i).cloned(),
            _ => None,
        }
    }

    /// Whether `field` (a full path such as `pool "web".backends[0].address`)
    /// of the entry spanning `span` was already reported and dropped by
    /// [`Self::entry`]: a later "missing" or "empty" about it would be noise.
    pub(super) fn dropped(&self, span: &Range<usize>, field: &str) -> bool {
        self.dropped.get(&span.start).is_some_and(|rels| {
            rels.iter().any(|rel| {
                rel == ALL
                    || field == rel.as_str()
                    || field
                        .strip_suffix(rel.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            })
        })
    }
}

/// Most keys of one entry reported and dropped one by one.
const MAX_RETRIES: usize = 20;

/// In [`Checker::dropped`]: the whole entry was given up.
const ALL: &str = "*";

const TYPE_FIX: &str =
    "give the value the type shown (see the configuration reference in README.md)";

fn as_value(item: Item) -> Option<Value> {
    match item {
        Item::Table(t) => Some(Value::InlineTable(t.into_inline_table())),
        Item::Value(v) => Some(v),
        _ => None,
    }
}

/// Remove the key (or array element) written at `at` inside `value`, or
/// whose value is written there; return its path below `value` and the
/// offset where it is written.
fn drop_key(value: &mut Value, at: &Range<usize>, prefix: &str) -> Option<(String, usize)> {
    match value {
        Value::InlineTable(t) => {
            let join = |k: &str| {
                if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                }
            };
            // serde stops at the first bad key, so it is usually near the front
            let here = t.iter().find_map(|(k, v)| {
                let key_span = t.key(k).and_then(|key| key.span());
                let value_span = v.span();
                (key_span.as_ref() == Some(at) || value_span.as_ref() == Some(at)).then(|| {
                    let offset = key_span.or(value_span).map_or(at.start, |s| s.start);
                    (k.to_string(), offset)
                })
            });
            if let Some((k, offset)) = here {
                t.remove(&k);
                return Some((join(&k), offset));
            }
            t.iter_mut().find_map(|(k, v)| drop_key(v, at, &join(&k)))
        }
        Value::Array(a) => {
            for i in 0..a.len() {
                // named entries are called as the checks call them: `service "web"`
                let name = a
                    .get(i)
                    .and_then(Value::as_inline_table)
                    .and_then(|t| t.get("name"))
                    .and_then(Value::as_str);
                let path = match name {
                    Some(name) => format!("{prefix} {name:?}"),
                    None => format!("{prefix}[{i}]"),
                };
                if a.get(i).and_then(Value::span).as_ref() == Some(at) {
                    a.remove(i);
                    return Some((path, at.start));
                }
                if let Some(found) = a.get_mut(i).and_then(|v| drop_key(v, at, &path)) {
                    return Some(found);
                }
            }
            None
        }
        _ => None,
    }
}

/// serde's message, split into the problem and its fix: an unknown field
/// gets the closest known name ("did you mean `weight`?"), returned too.
fn explain(msg: &str) -> (String, String, Option<&str>) {
    let Some(rest) = msg.strip_prefix("unknown field `") else {
        return (msg.to_string(), TYPE_FIX.to_string(), None);
    };
    let name = rest.split('`').next().unwrap_or_default();
    let known: Vec<&str> = msg
        .split_once("expected")
        .map(|(_, list)| list.split('`').skip(1).step_by(2).collect())
        .unwrap_or_default();
    let problem = format!("unknown field `{name}`");
    let listed = known
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let meant = closest(name, &known);
    let fix = match meant {
        Some(k) => format!("did you mean `{k}`?"),
        None if known.is_empty() => "remove it".to_string(),
        None => format!("remove it, or use one of the fields here: {listed}"),
    };
    (problem, fix, meant)
}

/// The known name nearest to `name`, if it is near enough to be a typo:
/// at most a third of its letters differ (one, for short names).
fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    let limit = (name.chars().count() / 3).max(1);
    known
        .iter()
        .map(|k| (edits(name, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Optimal string alignment distance: insertions, deletions, substitutions
/// and swaps of two neighbours (`wieght` is one edit from `weight`).
fn edits(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// Where each entry of an array of sections (`[[pool]]`, `pool = [...]`)
/// starts, and its section and index: [`Checker::entry`] finds an entry
/// of 100 000 in constant time.
pub(super) fn entries(doc: &toml_edit::ImDocument<&str>) -> HashMap<usize, (String, usize)> {
    let mut out = HashMap::new();
    for (key, item) in doc.iter() {
        let spans: Vec<Option<Range<usize>>> = match item {
            Item::ArrayOfTables(a) => a.iter().map(|t| t.span()).collect(),
            Item::Value(Value::Array(a)) => a.iter().map(Value::span).collect(),
            _ => continue,
        };
        for (i, span) in spans.into_iter().enumerate() {
            if let Some(span) = span {
                out.insert(span.start, (key.to_string(), i));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_swapped_pair_of_letters_is_one_edit() {
        assert_eq!(edits("wieght", "weight"), 1);
        assert_eq!(edits("address", "adress"), 1);
        assert_eq!(edits("bind", "pool"), 4);
    }

    #[test]
    fn an_unknown_field_is_explained_with_the_nearest_known_name() {
        assert_eq!(
            explain("unknown field `wieght`, expected `address` or `weight`"),
            (
                "unknown field `wieght`".to_string(),
                "did you mean `weight`?".to_string(),
                Some("weight")
            )
        );
        assert_eq!(
            explain("unknown field `colour`, expected `address` or `weight`").1,
            "remove it, or use one of the fields here: `address`, `weight`"
        );
    }
}
