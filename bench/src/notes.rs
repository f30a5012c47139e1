//! What a run could not measure. A case that failed makes the run fail; a case that could not
//! run here (a missing interpreter, library or emulator) is a note outside CI and a failure
//! under `CI=true`, where everything the bench needs is provided, so a smoke run cannot pass
//! by measuring less.

/// The run's failures and skips, in the order they happened.
#[derive(Debug, Default)]
pub(crate) struct Notes {
    /// Cases that errored.
    failed: Vec<String>,
    /// Cases that could not run on this machine.
    skipped: Vec<String>,
}

impl Notes {
    /// A case failed.
    pub(crate) fn fail(&mut self, why: impl Into<String>) {
        self.failed.push(why.into());
    }

    /// A case could not run here.
    pub(crate) fn skip(&mut self, why: impl Into<String>) {
        self.skipped.push(why.into());
    }

    /// Prints every note; returns whether the run must fail (`ci`: under `CI=true`).
    pub(crate) fn report(mut self, ci: bool) -> bool {
        self.failed.dedup();
        self.skipped.dedup();
        for why in &self.failed {
            println!("FAILED: {why}");
        }
        for why in &self.skipped {
            let label = if ci {
                "FAILED (cannot run in CI)"
            } else {
                "skipped"
            };
            println!("{label}: {why}");
        }
        !self.failed.is_empty() || (ci && !self.skipped.is_empty())
    }
}
