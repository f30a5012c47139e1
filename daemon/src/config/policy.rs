//! `[[policy]]`: who may read what, by uid, group and attested program.

use globset::{GlobSet, GlobSetBuilder};

use super::raw::RawPolicy;
use super::{ConfigError, invalid};

/// One `[[policy]]`, globs compiled.
#[derive(Debug, Clone)]
pub(crate) struct PolicyConfig {
    /// Peers whose uid is listed match.
    pub uids: Vec<u32>,
    /// Peers whose primary or supplementary gid is listed match.
    pub gids: Vec<u32>,
    /// Names a matching peer may read.
    pub allow: GlobSet,
    /// Names a matching peer may not read, whatever any policy allows.
    pub deny: GlobSet,
    /// Which programs the policy is for; a peer matches only if every selector present
    /// matches what was attested of it.
    pub selectors: Selectors,
}

/// Workload selectors of a policy (all optional; all present must match).
#[derive(Debug, Clone, Default)]
pub(crate) struct Selectors {
    /// Executable paths (exact or globs, `/` only matched literally).
    pub exe: Option<GlobSet>,
    /// Hex SHA-256 of the executable's content (lower case).
    pub exe_sha256: Option<Vec<String>>,
    /// systemd unit names (globs).
    pub systemd_unit: Option<GlobSet>,
    /// cgroup paths (globs, `/` only matched literally).
    pub cgroup: Option<GlobSet>,
}

impl Selectors {
    /// Whether any selector is present: the policy is bound to a program, not only a uid.
    pub(crate) fn any(&self) -> bool {
        self.exe.is_some()
            || self.exe_sha256.is_some()
            || self.systemd_unit.is_some()
            || self.cgroup.is_some()
    }

    /// Whether any selector needs the executable's hash.
    pub(crate) fn needs_hash(&self) -> bool {
        self.exe_sha256.is_some()
    }
}

pub(super) fn compile_globs(key: &str, patterns: &[String]) -> Result<GlobSet, ConfigError> {
    compile_globs_with(key, patterns, false)
}

/// Compiles `patterns`; with `paths`, `*` and `?` never match a `/`.
pub(super) fn compile_globs_with(
    key: &str,
    patterns: &[String],
    paths: bool,
) -> Result<GlobSet, ConfigError> {
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        let glob = globset::GlobBuilder::new(p)
            .literal_separator(paths)
            .build()
            .map_err(|e| invalid(format!("policy {key} pattern {p:?}: {e}")))?;
        builder.add(glob);
    }
    builder
        .build()
        .map_err(|e| invalid(format!("policy {key}: {e}")))
}

pub(super) fn validate_policy(index: usize, p: RawPolicy) -> Result<PolicyConfig, ConfigError> {
    let key = format!("#{}", index + 1);
    if p.uids.is_empty() && p.gids.is_empty() {
        return Err(invalid(format!(
            "policy {key} lists no uids and no gids, so it matches nobody"
        )));
    }
    if p.allow.is_empty() && p.deny.is_empty() {
        return Err(invalid(format!(
            "policy {key} has neither allow nor deny patterns"
        )));
    }
    let non_empty = |name: &str, v: &Option<Vec<String>>| -> Result<(), ConfigError> {
        if v.as_ref().is_some_and(Vec::is_empty) {
            return Err(invalid(format!(
                "policy {key} {name} = [] matches no program; remove the key to match any"
            )));
        }
        Ok(())
    };
    non_empty("exe", &p.exe)?;
    non_empty("exe_sha256", &p.exe_sha256)?;
    non_empty("systemd_unit", &p.systemd_unit)?;
    non_empty("cgroup", &p.cgroup)?;
    for path in p.exe.iter().flatten() {
        if !path.starts_with('/') {
            return Err(invalid(format!(
                "policy {key} exe {path:?} must be an absolute path"
            )));
        }
    }
    for path in p.cgroup.iter().flatten() {
        if !path.starts_with('/') {
            return Err(invalid(format!(
                "policy {key} cgroup {path:?} must start with / (like \"/system.slice/mm.service\")"
            )));
        }
    }
    let exe_sha256 = p
        .exe_sha256
        .map(|hashes| {
            hashes
                .into_iter()
                .map(|h| {
                    if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
                        Ok(h.to_ascii_lowercase())
                    } else {
                        Err(invalid(format!(
                            "policy {key} exe_sha256 {h:?} is not 64 hex digits"
                        )))
                    }
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let selectors = Selectors {
        exe: p
            .exe
            .map(|v| compile_globs_with(&format!("{key} exe"), &v, true))
            .transpose()?,
        exe_sha256,
        systemd_unit: p
            .systemd_unit
            .map(|v| compile_globs(&format!("{key} systemd_unit"), &v))
            .transpose()?,
        cgroup: p
            .cgroup
            .map(|v| compile_globs_with(&format!("{key} cgroup"), &v, true))
            .transpose()?,
    };
    Ok(PolicyConfig {
        allow: compile_globs(&format!("{key} allow"), &p.allow)?,
        deny: compile_globs(&format!("{key} deny"), &p.deny)?,
        uids: p.uids,
        gids: p.gids,
        selectors,
    })
}
