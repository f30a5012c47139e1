//! The values a run holds: fetched from the daemon as the caller, kept zeroized, compared after
//! a change, and shared with the output mask.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use secretd_client::Client;
use zeroize::Zeroizing;

use super::RunError;

/// One secret's bytes, wiped when dropped.
pub(super) type Value = Zeroizing<Vec<u8>>;

/// Fetches values and remembers every one seen, for the mask.
#[derive(Debug)]
pub(super) struct Fetcher {
    /// The daemon, reached as the user who ran `secretd run`.
    client: Client,
    /// Every value this run has held, by name (old ones too: a child may still print a value
    /// from before a rotation). Empty unless `--mask`.
    seen: Option<Arc<Seen>>,
}

/// The values the mask replaces, longest first.
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// (name, value) pairs; grows on every rotation, which is rare.
    values: RwLock<Vec<(String, Value)>>,
}

impl Seen {
    /// Runs `f` with the current list.
    pub(super) fn with<R>(&self, f: impl FnOnce(&[(String, Value)]) -> R) -> R {
        f(&self.values.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn add(&self, name: &str, value: &[u8]) {
        if value.is_empty() {
            return;
        }
        let mut list = self.values.write().unwrap_or_else(PoisonError::into_inner);
        if list.iter().any(|(_, v)| v.as_slice() == value) {
            return;
        }
        list.push((name.to_owned(), Zeroizing::new(value.to_vec())));
        // Longest first: a value that contains another is replaced whole.
        list.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    }
}

impl Fetcher {
    pub(super) fn new(client: Client, mask: bool) -> Fetcher {
        Fetcher {
            client,
            seen: mask.then(Arc::default),
        }
    }

    /// The mask's list, when masking.
    pub(super) fn seen(&self) -> Option<Arc<Seen>> {
        self.seen.clone()
    }

    /// The client, for the watch.
    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    /// One value.
    pub(super) fn fetch(&self, name: &str) -> Result<Value, RunError> {
        let secret = self.client.get(name).map_err(|source| RunError::Secret {
            name: name.to_owned(),
            source,
        })?;
        let value = Zeroizing::new(secret.expose().to_vec());
        if let Some(seen) = &self.seen {
            seen.add(name, &value);
        }
        Ok(value)
    }

    /// Every name in `names`, all or nothing.
    pub(super) fn fetch_all<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Values, RunError> {
        let mut values = Values::default();
        for name in names {
            if !values.0.contains_key(name) {
                let value = self.fetch(name)?;
                values.0.insert(name.to_owned(), value);
            }
        }
        Ok(values)
    }
}

/// Values by catalog name.
#[derive(Default)]
pub(super) struct Values(BTreeMap<String, Value>);

impl std::fmt::Debug for Values {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only, never values.
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Values {
    pub(super) fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    pub(super) fn insert(&mut self, name: &str, value: Value) {
        self.0.insert(name.to_owned(), value);
    }

    /// The names held.
    pub(super) fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// `text` with every value in it replaced by `<redacted:NAME>`, for messages that might
    /// quote one.
    pub(super) fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        let mut by_length: Vec<_> = self.0.iter().filter(|(_, v)| !v.is_empty()).collect();
        by_length.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
        for (name, value) in by_length {
            if let Ok(value) = std::str::from_utf8(value) {
                out = out.replace(value, &format!("<redacted:{name}>"));
            }
        }
        out
    }

    /// Whether any value differs from `other`'s (names are the same: both fetched one list).
    pub(super) fn differs_from(&self, other: &Values) -> bool {
        self.0.len() != other.0.len()
            || self.0.iter().any(|(name, v)| {
                other
                    .0
                    .get(name)
                    .is_none_or(|o| o.as_slice() != v.as_slice())
            })
    }
}
