//! `--template SRC:DEST`: minijinja templates with `{{ secret("NAME") }}`, auto-escaping off
//! (a value goes in byte for byte) and undefined names an error (a typo fails the start
//! instead of rendering an empty password).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use zeroize::Zeroizing;

use super::RunError;
use super::values::{Fetcher, Values};

/// The largest template file: a config file, not a data set.
pub(super) const MAX_TEMPLATE_BYTES: u64 = 1024 * 1024;

/// A template read once at start (a change of the file needs a new run, as with a config).
#[derive(Debug)]
pub(super) struct Template {
    /// The file it came from, for errors.
    pub(super) src: PathBuf,
    /// The destination in the run directory.
    pub(super) dest: PathBuf,
    /// The text.
    source: String,
}

/// What a rendering call may read: values already fetched, and the daemon for the rest.
struct Lookup {
    /// The daemon.
    fetcher: Arc<Fetcher>,
    /// Values fetched so far; names a template asks for are added.
    values: Values,
    /// The first fetch error, reported as it is rather than through minijinja's text.
    failed: Option<RunError>,
}

impl Template {
    /// Reads the template file.
    pub(super) fn load(src: &Path, dest: &Path) -> Result<Template, RunError> {
        let file_error = |source| RunError::TemplateFile {
            path: src.to_owned(),
            source,
        };
        let len = std::fs::metadata(src).map_err(file_error)?.len();
        if len > MAX_TEMPLATE_BYTES {
            return Err(RunError::Template {
                path: src.to_owned(),
                message: format!("larger than {MAX_TEMPLATE_BYTES} bytes"),
            });
        }
        Ok(Template {
            src: src.to_owned(),
            dest: dest.to_owned(),
            source: std::fs::read_to_string(src).map_err(file_error)?,
        })
    }

    /// Renders with `values`, fetching any name not in it (and adding it there).
    pub(super) fn render(
        &self,
        fetcher: &Arc<Fetcher>,
        values: &mut Values,
    ) -> Result<Zeroizing<String>, RunError> {
        // The function must own what it reads: the values move in and back out.
        let lookup = Arc::new(Mutex::new(Lookup {
            fetcher: fetcher.clone(),
            values: std::mem::take(values),
            failed: None,
        }));
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        // A config file keeps its last newline (minijinja drops it by default).
        env.set_keep_trailing_newline(true);
        let reader = lookup.clone();
        env.add_function("secret", move |name: &str| {
            reader
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .read(name)
        });
        let rendered = env
            .template_from_named_str("template", &self.source)
            .and_then(|t| t.render(()))
            .map(Zeroizing::new);
        drop(env);
        let mut lookup = lookup.lock().unwrap_or_else(PoisonError::into_inner);
        *values = std::mem::take(&mut lookup.values);
        if let Some(failed) = lookup.failed.take() {
            return Err(failed);
        }
        rendered.map_err(|e| self.error(&e, values))
    }

    fn error(&self, e: &minijinja::Error, values: &Values) -> RunError {
        // minijinja's own text (without its "debug" feature it lists no variables), with any
        // value a filter's message might quote replaced all the same.
        let line = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
        let kind = e.kind().to_string();
        let message = format!("{}{line}", e.detail().unwrap_or(&kind));
        RunError::Template {
            path: self.src.clone(),
            message: values.redact(&message),
        }
    }
}

impl Lookup {
    fn read(&mut self, name: &str) -> Result<String, minijinja::Error> {
        let fail = |what: String| minijinja::Error::new(ErrorKind::InvalidOperation, what);
        secretd_proto::validate_name(name).map_err(|why| fail(why.to_owned()))?;
        if self.values.get(name).is_none() {
            match self.fetcher.fetch(name) {
                Ok(value) => self.values.insert(name, value),
                Err(e) => {
                    let text = e.to_string();
                    self.failed.get_or_insert(e);
                    return Err(fail(text));
                }
            }
        }
        let value = self
            .values
            .get(name)
            .map(|v| v.as_slice())
            .unwrap_or_default();
        match std::str::from_utf8(value) {
            Ok(text) => Ok(text.to_owned()),
            Err(_) => {
                let e = RunError::NotText(name.to_owned());
                let text = e.to_string();
                self.failed.get_or_insert(e);
                Err(fail(text))
            }
        }
    }
}
