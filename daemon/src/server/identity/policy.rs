//! Access decisions from peer credentials.
//!
//! A policy matches a peer whose uid is listed or whose primary or supplementary gid is
//! listed. A peer may read a name when some matching policy allows it and no matching policy
//! denies it (deny wins). Decisions over the catalog are computed once per connection, so the
//! read path looks up a bool, not a glob.

use super::Peer;
use super::attest::{Attested, Needs};
use crate::catalog::Catalog;
use crate::config::{PolicyConfig, Selectors};

/// Whether every selector present matches what was attested. An attribute that could not be
/// read (or an executable replaced or deleted since the process started) matches no selector
/// that names it.
fn selected(s: &Selectors, a: &Attested) -> bool {
    let exe = s
        .exe
        .as_ref()
        .is_none_or(|g| a.exe.as_ref().is_some_and(|p| g.is_match(p)));
    let hash = s.exe_sha256.as_ref().is_none_or(|hashes| {
        a.exe.is_some() && a.exe_sha256.as_ref().is_some_and(|h| hashes.contains(h))
    });
    let unit = s
        .systemd_unit
        .as_ref()
        .is_none_or(|g| a.unit.as_ref().is_some_and(|u| g.is_match(u)));
    let cgroup = s
        .cgroup
        .as_ref()
        .is_none_or(|g| a.cgroup.as_ref().is_some_and(|c| g.is_match(c)));
    exe && hash && unit && cgroup
}

/// The daemon's access rules.
#[derive(Debug)]
pub(crate) struct Policy {
    /// Uids allowed admin operations.
    admin_uids: Vec<u32>,
    /// `[[policy]]` rules in config order.
    rules: Vec<PolicyConfig>,
}

/// What one connected peer may do, computed at accept.
#[derive(Debug)]
pub(crate) struct Access {
    /// Whether admin operations are allowed.
    pub admin: bool,
    /// Readability of each catalog slot, by slot index.
    readable: Box<[bool]>,
    /// Indices of the rules matching this peer, to judge names outside the catalog.
    matching: Vec<usize>,
}

impl Policy {
    /// Rules from the config.
    pub(crate) fn new(admin_uids: Vec<u32>, rules: Vec<PolicyConfig>) -> Policy {
        Policy { admin_uids, rules }
    }

    /// Whether `uid` may run admin operations (and use the connections kept for admins).
    pub(crate) fn is_admin(&self, uid: u32) -> bool {
        self.admin_uids.contains(&uid)
    }

    /// Everything `peer` may do with `catalog`.
    pub(crate) fn access_for(&self, peer: &Peer, catalog: &Catalog) -> Access {
        let matching: Vec<usize> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                (r.uids.contains(&peer.uid) || r.gids.iter().any(|g| peer.in_group(*g)))
                    && selected(&r.selectors, &peer.attested)
            })
            .map(|(i, _)| i)
            .collect();
        let readable = catalog
            .slots()
            .iter()
            .map(|slot| self.allows(&matching, &slot.name))
            .collect();
        Access {
            admin: self.is_admin(peer.uid),
            readable,
            matching,
        }
    }

    /// What the rules that could match a process of `uid`, `gid` and `groups` ask of its
    /// program: only then are its descriptors checked and its executable hashed.
    pub(crate) fn needs(&self, uid: u32, gid: u32, groups: &[u32]) -> Needs {
        let mut needs = Needs::default();
        let in_group = |g: &u32| *g == gid || groups.contains(g);
        for rule in &self.rules {
            if rule.uids.contains(&uid) || rule.gids.iter().any(in_group) {
                needs.program |= rule.selectors.any();
                needs.hash |= rule.selectors.needs_hash();
            }
        }
        needs
    }

    fn allows(&self, matching: &[usize], name: &str) -> bool {
        let allowed = matching.iter().any(|&i| self.rules[i].allow.is_match(name));
        let denied = matching.iter().any(|&i| self.rules[i].deny.is_match(name));
        allowed && !denied
    }

    /// Whether the peer's rules would allow `name` were it in the catalog. Used only for names
    /// the catalog lacks, to answer NotFound to callers who could read it and PermissionDenied
    /// to the rest (so the catalog's contents are not revealed to strangers).
    pub(crate) fn would_allow(&self, access: &Access, name: &str) -> bool {
        self.allows(&access.matching, name)
    }
}

impl Access {
    /// Whether catalog slot `idx` is readable.
    pub(crate) fn can_read(&self, idx: usize) -> bool {
        self.readable.get(idx).copied().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const CONFIG: &str = r#"
[[secret]]
name = "trading_api_key"
source = "env"
env = "A"
[[secret]]
name = "trading_client_secret"
source = "env"
env = "B"
[[secret]]
name = "webhook_shared_secret"
source = "env"
env = "C"
[[policy]]
uids = [1001]
allow = ["trading_*"]
[[policy]]
gids = [2001]
allow = ["*"]
deny = ["trading_client_secret"]
"#;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            groups: groups.to_vec(),
            attested: Attested::default(),
            written_as: super::super::Sender {
                pid: None,
                uid,
                gid,
            },
        }
    }

    #[test]
    fn allow_deny_and_groups() {
        let config = Config::parse(CONFIG).expect("config");
        let catalog = Catalog::new(&config);
        let policy = Policy::new(config.daemon.admin_uids.clone(), config.policies.clone());

        let bot = policy.access_for(&peer(1001, 1001, &[]), &catalog);
        assert!(bot.can_read(0) && bot.can_read(1) && !bot.can_read(2));
        assert!(!bot.admin);
        assert!(policy.would_allow(&bot, "trading_new"));
        assert!(!policy.would_allow(&bot, "other"));

        // Matching both rules: the group rule's deny wins over the uid rule's allow.
        let both = policy.access_for(&peer(1001, 5, &[2001]), &catalog);
        assert!(both.can_read(0) && !both.can_read(1) && both.can_read(2));

        let stranger = policy.access_for(&peer(4242, 4242, &[]), &catalog);
        assert!((0..3).all(|i| !stranger.can_read(i)));
        assert!(!policy.would_allow(&stranger, "anything"));

        let root = policy.access_for(&peer(0, 0, &[]), &catalog);
        assert!(root.admin && !root.can_read(0), "admin does not imply read");
    }

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// Two rules that bind uid 1001 to programs, and one that binds group 2001 to a hash.
    fn bound_policy() -> Policy {
        let config = Config::parse(&format!(
            r#"
[[secret]]
name = "trading_api_key"
source = "env"
env = "A"
[[policy]]
uids = [1001]
allow = ["*"]
exe = ["/opt/bots/mm"]
[[policy]]
uids = [1001]
allow = ["*"]
systemd_unit = ["mm.service"]
[[policy]]
gids = [2001]
allow = ["*"]
exe_sha256 = ["{HASH}"]
"#
        ))
        .expect("config");
        Policy::new(config.daemon.admin_uids.clone(), config.policies.clone())
    }

    #[test]
    fn a_peer_needs_attesting_when_some_rule_it_could_match_names_a_program() {
        let policy = bound_policy();
        let program = Needs {
            program: true,
            hash: false,
        };
        let hashed = Needs {
            program: true,
            hash: true,
        };
        // Two rules bind the uid: the second does not undo what the first asks.
        assert_eq!(policy.needs(1001, 1001, &[]), program);
        // By primary group, and by a supplementary one.
        assert_eq!(policy.needs(7, 2001, &[]), hashed);
        assert_eq!(policy.needs(7, 7, &[5, 2001]), hashed);
        // A peer no rule could match is not attested at all.
        assert_eq!(policy.needs(7, 7, &[5]), Needs::default());
    }

    #[test]
    fn a_hash_without_the_executable_it_came_from_matches_nothing() {
        let policy = bound_policy();
        let hashed = Attested {
            exe: Some("/opt/bots/other".into()),
            exe_sha256: Some(HASH.to_owned()),
            ..Attested::default()
        };
        let config = Config::parse(CONFIG).expect("config");
        let catalog = Catalog::new(&config);
        let mut member = peer(7, 2001, &[]);
        member.attested = hashed.clone();
        assert!(policy.access_for(&member, &catalog).can_read(0));
        // Attestation never leaves a hash without its path; were it to, the hash alone
        // (of a program replaced since) must not be taken as the program's.
        member.attested = Attested {
            exe: None,
            ..hashed
        };
        assert!(!policy.access_for(&member, &catalog).can_read(0));
    }
}
