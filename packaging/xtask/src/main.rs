//! `secretd-xtask DIR`: writes the man pages (`DIR/man/*.1`, one per subcommand, from the clap
//! definitions) and the bash, zsh and fish completions (`DIR/completions/`) that
//! `scripts/package` puts into the `secretd` package. Generated at packaging time so they
//! cannot drift from the CLI; a separate binary so the daemon does not carry the generators.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_complete::Shell;

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: secretd-xtask OUT_DIR");
        return ExitCode::from(2);
    };
    match generate(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("secretd-xtask: cannot write to {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

fn generate(out: &Path) -> std::io::Result<()> {
    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    // secretd.1 and secretd-SUBCOMMAND.1 for every subcommand, cross-referenced.
    clap_mangen::generate_to(secretd_daemon::cli::command(), &man)?;
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    let mut cli = secretd_daemon::cli::command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cli, "secretd", &completions)?;
    }
    Ok(())
}
