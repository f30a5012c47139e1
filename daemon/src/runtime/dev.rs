//! `secretd serve --dev`: a complete local setup with no cloud account.
//!
//! The four Omni catalog names come from demo files under a per-user runtime directory (or
//! from environment variables of the same name in upper case, when set); the current user is
//! admin and may read everything. The config is generated as TOML and parsed by the same code
//! as any other, so dev mode exercises the real path.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};

/// The catalog names and demo values of development mode. Not secrets: printed in the README.
pub(crate) const DEMO_CATALOG: [(&str, &str); 4] = [
    ("trading_api_key", "demo-Omni-ApiKey-7f3a9c2e41b8"),
    (
        "trading_client_secret",
        "demo-Omni-ClientSecret-5d8e2b7a90c1!",
    ),
    ("trading_api_passphrase", "demo-Omni-Passphrase-2024#"),
    ("webhook_shared_secret", "demo-Omni-Webhook-9b1c6f0e3a72$"),
];

/// Why the development setup failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DevError {
    /// A directory or demo file could not be created.
    #[error("cannot prepare {}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The generated config did not validate (a bug).
    #[error(transparent)]
    Config(#[from] ConfigError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DevError + '_ {
    move |source| DevError::Io {
        path: path.to_owned(),
        source,
    }
}

fn ensure_private_dir(dir: &Path) -> Result<(), DevError> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io(dir)(e)),
    }
}

/// Builds the development config for `euid`, writing demo value files that are missing.
pub(crate) fn dev_config(euid: u32) -> Result<Config, DevError> {
    let dir = secretd_proto::paths::dev_runtime_dir(euid);
    ensure_private_dir(&dir)?;
    let values = dir.join("dev-values");
    ensure_private_dir(&values)?;

    let mut toml = format!(
        "[daemon]\nsocket = {socket:?}\nsocket_mode = \"0600\"\ndb = {db:?}\nadmin_uids = [{euid}]\n\n",
        socket = dir
            .join(secretd_proto::paths::SOCKET_FILE)
            .display()
            .to_string(),
        db = dir.join("secretd.redb").display().to_string(),
    );
    for (name, demo) in DEMO_CATALOG {
        let var = name.to_ascii_uppercase();
        if std::env::var_os(&var).is_some() {
            toml.push_str(&format!(
                "[[secret]]\nname = \"{name}\"\nsource = \"env\"\nenv = \"{var}\"\n\n"
            ));
            continue;
        }
        let path = values.join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut f) => f.write_all(demo.as_bytes()).map_err(io(&path))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(&path)(e)),
        }
        toml.push_str(&format!(
            "[[secret]]\nname = \"{name}\"\nsource = \"file\"\npath = {:?}\n\n",
            path.display().to_string()
        ));
    }
    toml.push_str(&format!("[[policy]]\nuids = [{euid}]\nallow = [\"*\"]\n"));
    Ok(Config::parse(&toml)?)
}
