//! A typed builder for the daemon's TOML config, so tests state what they configure instead of
//! formatting TOML by hand (values are escaped by the `toml` crate, never spliced into text).

use std::path::Path;

use toml::{Table, Value};

use super::{TestEnv, euid};

/// The `[gsm]` settings every GSM test starts from: anonymous (the fake takes no token) and
/// short timeouts, so an injected outage costs the test a second, not the production budget.
const FAST_GSM: [(&str, &str); 2] = [("attempt_timeout", "500ms"), ("retry_budget", "1s")];

/// Builds a config for one [`TestEnv`]: its socket and database are set from the start.
#[derive(Debug, Clone)]
pub(crate) struct ConfigBuilder<'a> {
    /// Where secret files are written.
    env: &'a TestEnv,
    /// `[daemon]`.
    daemon: Table,
    /// `[gsm]`, once a GSM endpoint is set.
    gsm: Option<Table>,
    /// `[break_glass]`, once a key is set.
    break_glass: Option<Table>,
    /// `[[secret]]` entries, in order.
    secrets: Vec<Table>,
    /// `[[policy]]` entries, in order.
    policies: Vec<Table>,
}

impl TestEnv {
    /// A config for this env's socket and database, to be filled in.
    pub(crate) fn conf(&self) -> ConfigBuilder<'_> {
        let mut daemon = Table::new();
        daemon.insert("socket".into(), path_value(&self.socket()));
        daemon.insert("db".into(), path_value(&self.path("secretd.redb")));
        ConfigBuilder {
            env: self,
            daemon,
            gsm: None,
            break_glass: None,
            secrets: Vec::new(),
            policies: Vec::new(),
        }
    }
}

fn path_value(path: &Path) -> Value {
    Value::String(path.to_str().expect("utf-8 path").to_owned())
}

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::from(*s)).collect())
}

impl ConfigBuilder<'_> {
    /// Sets `[daemon] key = value`.
    pub(crate) fn daemon(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.daemon.insert(key.into(), value.into());
        self
    }

    /// Lets uid/gid 65534 (`TestEnv::run_as_nobody`) reach the socket: mode 0660 and the
    /// socket's group 65534 (the daemon refuses a socket every local user could write). Giving
    /// a file to another group needs root; without it the socket stays private (and the tests
    /// that run as 65534 skip, outside CI).
    pub(crate) fn shared_with_nobody(self) -> Self {
        if super::is_root() {
            self.daemon("socket_mode", "0660")
                .daemon("socket_group", "65534")
        } else {
            self
        }
    }

    /// A `[gsm]` section for `endpoint`, anonymous, with short timeouts; and
    /// `allow_short_ttl`, since tests refresh GSM secrets every second or two.
    pub(crate) fn gsm(mut self, endpoint: &str) -> Self {
        self.daemon
            .insert("allow_short_ttl".into(), Value::Boolean(true));
        let mut gsm = Table::new();
        gsm.insert("endpoint".into(), endpoint.into());
        gsm.insert("anonymous".into(), true.into());
        for (k, v) in FAST_GSM {
            gsm.insert(k.into(), v.into());
        }
        self.gsm = Some(gsm);
        self
    }

    /// A `[gsm]` section for `fake` with real credentials: a service-account key the fake is
    /// told to require (see [`super::google`]), instead of `anonymous`.
    pub(crate) fn gsm_authenticated(self, fake: &secretd_gsm_fake::FakeGsm) -> Self {
        let key = super::google::service_account(self.env, fake);
        self.gsm(&fake.endpoint())
            .gsm_unset("anonymous")
            .gsm_set("credentials_file", key)
    }

    /// `[gsm.notifications]` on `subscription` at the emulator's `endpoint` (and `[gsm] project`
    /// with its number, as notifications need), with a short
    /// jitter (after [`ConfigBuilder::gsm`]).
    pub(crate) fn gsm_notifications(mut self, subscription: &str, endpoint: &str) -> Self {
        let mut table = Table::new();
        table.insert("subscription".into(), subscription.into());
        table.insert("endpoint".into(), endpoint.into());
        table.insert("notification_jitter".into(), "200ms".into());
        table.insert("health_check_interval".into(), "1s".into());
        table.insert("rotation_check_spread".into(), "200ms".into());
        let gsm = self.gsm.as_mut().expect("call gsm(endpoint) first");
        gsm.insert("notifications".into(), Value::Table(table));
        // The tests' secrets live in project apex-test; messages name it by number.
        gsm.insert("project".into(), "apex-test".into());
        gsm.insert(
            "project_number".into(),
            secretd_gsm_fake::project_number("apex-test").into(),
        );
        self
    }

    /// Sets `[gsm.notifications] key = value` (after [`ConfigBuilder::gsm_notifications`]).
    pub(crate) fn gsm_notifications_set(mut self, key: &str, value: impl Into<Value>) -> Self {
        let Some(Value::Table(table)) = self
            .gsm
            .as_mut()
            .and_then(|gsm| gsm.get_mut("notifications"))
        else {
            panic!("call gsm_notifications first");
        };
        table.insert(key.into(), value.into());
        self
    }

    /// Sets `[gsm] key = value` (after [`ConfigBuilder::gsm`]).
    pub(crate) fn gsm_set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.gsm
            .as_mut()
            .expect("call gsm(endpoint) first")
            .insert(key.into(), value.into());
        self
    }

    /// Removes `[gsm] key` (after [`ConfigBuilder::gsm`]): `anonymous`, for the tests of real
    /// credentials.
    pub(crate) fn gsm_unset(mut self, key: &str) -> Self {
        self.gsm
            .as_mut()
            .expect("call gsm(endpoint) first")
            .remove(key);
        self
    }

    /// A `[break_glass]` section with this private key.
    pub(crate) fn break_glass(mut self, private_key: &Path) -> Self {
        let mut table = Table::new();
        table.insert("private_key".into(), path_value(private_key));
        self.break_glass = Some(table);
        self
    }

    fn secret(mut self, name: &str, source: &str, key: &str, value: Value) -> Self {
        let mut table = Table::new();
        table.insert("name".into(), name.into());
        table.insert("source".into(), source.into());
        table.insert(key.into(), value);
        self.secrets.push(table);
        self
    }

    /// A `file` secret whose value is written (mode 0600) into the env now.
    pub(crate) fn file_secret(self, name: &str, value: &[u8]) -> Self {
        let path = self.env.write_value(name, value);
        self.secret(name, "file", "path", path_value(&path))
    }

    /// An `env` secret read from the daemon's variable `var`.
    pub(crate) fn env_secret(self, name: &str, var: &str) -> Self {
        self.secret(name, "env", "env", var.into())
    }

    /// A `gsm` secret (`gcp_secret` as a full resource or an id in `[gsm] project`).
    pub(crate) fn gsm_secret(self, name: &str, gcp_secret: &str) -> Self {
        self.secret(name, "gsm", "gcp_secret", gcp_secret.into())
    }

    /// Sets `key = value` on the last `[[secret]]` (`version`, `ttl`, `owner`, ...).
    pub(crate) fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.secrets
            .last_mut()
            .expect("add a secret first")
            .insert(key.into(), value.into());
        self
    }

    /// A `[[policy]]` for `uids` allowing and denying the given patterns.
    pub(crate) fn policy(mut self, uids: &[u32], allow: &[&str], deny: &[&str]) -> Self {
        let mut table = Table::new();
        table.insert(
            "uids".into(),
            Value::Array(uids.iter().map(|u| Value::from(*u)).collect()),
        );
        table.insert("allow".into(), strings(allow));
        if !deny.is_empty() {
            table.insert("deny".into(), strings(deny));
        }
        self.policies.push(table);
        self
    }

    /// A `[[policy]]` letting the test's own uid read every secret.
    pub(crate) fn readable_by_me(self) -> Self {
        self.policy(&[euid()], &["*"], &[])
    }

    /// The TOML text.
    pub(crate) fn build(&self) -> String {
        let mut root = Table::new();
        root.insert("daemon".into(), Value::Table(self.daemon.clone()));
        if let Some(gsm) = &self.gsm {
            root.insert("gsm".into(), Value::Table(gsm.clone()));
        }
        if let Some(bg) = &self.break_glass {
            root.insert("break_glass".into(), Value::Table(bg.clone()));
        }
        let array =
            |tables: &[Table]| Value::Array(tables.iter().cloned().map(Value::Table).collect());
        if !self.secrets.is_empty() {
            root.insert("secret".into(), array(&self.secrets));
        }
        if !self.policies.is_empty() {
            root.insert("policy".into(), array(&self.policies));
        }
        toml::to_string(&root).expect("a table always serializes")
    }
}
