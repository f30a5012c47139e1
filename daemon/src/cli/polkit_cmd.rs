//! `secretd polkit-rule`: the polkit rule that lets the daemon's user try-restart exactly the
//! units `[[credential]]` restarts on a rotation, and nothing else. The packaged unit writes it
//! before every start (`ExecStartPre=+`), so it follows the config.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::error::{CliError, print_bytes};
use crate::config::Config;

/// Prints the rule, or writes it to `out` (atomically, mode 0644; skipped with a note when
/// polkit is not installed, as the directory then does not exist).
pub(super) fn run(config: &Path, user: &str, out: Option<&Path>) -> Result<(), CliError> {
    let config = Config::load(config)?;
    if user.is_empty()
        || !user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    {
        return Err(CliError::Argument {
            flag: "--user",
            value: user.to_owned(),
            why: "not a user name".into(),
        });
    }
    let units: Vec<&str> = config
        .credentials
        .iter()
        .filter(|g| g.restart_on_change)
        .flat_map(|g| g.units_text.iter().map(String::as_str))
        .collect();
    let text = rule(user, &units);
    let Some(out) = out else {
        return print_bytes(text.as_bytes());
    };
    let dir = out.parent().unwrap_or(Path::new("."));
    if !dir.is_dir() {
        eprintln!(
            "secretd: {} does not exist (polkit is not installed?); no rule written",
            dir.display()
        );
        return Ok(());
    }
    let tmp = out.with_extension("rules.tmp");
    let file_error = |source| CliError::File {
        what: "cannot write",
        path: out.to_owned(),
        source,
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            // polkitd reads it as its own user; the unit's UMask=0077 would leave it 0600.
            f.set_permissions(std::fs::Permissions::from_mode(0o644))
        })
        .and_then(|()| std::fs::rename(&tmp, out))
        .map_err(file_error)
}

/// The rule's JavaScript: `try-restart` of the listed units (globs) for `user` only.
pub(crate) fn rule(user: &str, units: &[&str]) -> String {
    let mut text = String::from(
        "// Written by `secretd polkit-rule` from secretd's config: the daemon may try-restart\n\
         // the units its [[credential]] tables restart on a rotation, and nothing else.\n\
         // Regenerated before every start of secretd.service; edits are lost.\n",
    );
    if units.is_empty() {
        text.push_str("// No [[credential]] restarts units on a change: nothing is granted.\n");
        return text;
    }
    let pattern = units
        .iter()
        .map(|u| glob_to_regex(u))
        .collect::<Vec<_>>()
        .join("|");
    text.push_str(&format!(
        "polkit.addRule(function(action, subject) {{\n\
         \x20   if (action.id == \"org.freedesktop.systemd1.manage-units\" &&\n\
         \x20       subject.user == \"{user}\" &&\n\
         \x20       action.lookup(\"verb\") == \"try-restart\" &&\n\
         \x20       /^(?:{pattern})$/.test(action.lookup(\"unit\"))) {{\n\
         \x20       return polkit.Result.YES;\n\
         \x20   }}\n\
         }});\n"
    ));
    text
}

/// A unit glob (`*`, `?`, `[...]`, `[!...]`; the config allows no other special characters)
/// as a JavaScript regular expression body.
fn glob_to_regex(glob: &str) -> String {
    let mut out = String::new();
    let mut in_class = false;
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                if chars.peek() == Some(&'!') {
                    chars.next();
                    out.push('^');
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            '*' if !in_class => out.push_str(".*"),
            '?' if !in_class => out.push('.'),
            '\\' => out.push_str("\\\\"),
            c if !in_class && ".@:-".contains(c) => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_anchored_regular_expressions() {
        assert_eq!(glob_to_regex("mm-bot.service"), r"mm\-bot\.service");
        assert_eq!(glob_to_regex("fix-gw@*.service"), r"fix\-gw\@.*\.service");
        assert_eq!(glob_to_regex("a?[!x].service"), r"a.[^x]\.service");
    }

    #[test]
    fn the_rule_names_the_user_the_verb_and_the_units() {
        let text = rule("secretd", &["mm-bot.service", "fix-gw@*.service"]);
        assert!(text.contains("subject.user == \"secretd\""));
        assert!(text.contains("== \"try-restart\""));
        assert!(text.contains(r"/^(?:mm\-bot\.service|fix\-gw\@.*\.service)$/"));
        assert!(!rule("secretd", &[]).contains("addRule"));
    }
}
