//! Workflow versioning: the patch ids of changes to the workflow code, and which of them this
//! worker leaves dormant. The rule is in docs/architecture.md ("Workflow versioning"): a change
//! that alters the commands a history records goes behind `ctx.patched(ID)` with its id listed
//! here, and ships dormant first (`TF_WORKER_DORMANT_PATCHES`) so that a fleet of old and new
//! workers never hands a run that took the new branch to a worker that does not know it.

use std::collections::BTreeSet;
use std::sync::Arc;

use temporalio_sdk::{PatchActivationCallback, PatchActivationInput};

/// A change made only in the upgrade drill's build (`--features upgrade-drill`): once a run has
/// begun, it waits one extra 1 ms timer before resolving its context. It exists so the
/// rolling-upgrade test has a real workflow change to roll out, placed where an unguarded change
/// would break every run in flight (before the run's first wait).
#[cfg(feature = "upgrade-drill")]
pub const UPGRADE_DRILL: &str = "upgrade-drill";

/// Every patch id the workflow code calls `patched`/`deprecate_patch` with, oldest first.
/// Retired ids stay listed (with their retirement in docs/architecture.md), so an id is never
/// reused for another change.
pub const KNOWN: &[&str] = &[
    #[cfg(feature = "upgrade-drill")]
    UPGRADE_DRILL,
];

#[derive(Debug, thiserror::Error)]
#[error("TF_WORKER_DORMANT_PATCHES names {0:?}, which this build does not know (it knows {KNOWN:?})")]
pub struct UnknownPatch(String);

/// The patches this worker leaves dormant: a run that reaches one for the first time takes the
/// old branch and records no marker, exactly as an older build would.
#[derive(Debug, Clone, Default)]
pub struct Dormant(BTreeSet<String>);

impl Dormant {
    /// Parses the setting's ids; an id this build does not know is refused (a typo would
    /// otherwise activate the patch it meant to hold back).
    pub fn parse<S: AsRef<str>>(ids: &[S]) -> Result<Dormant, UnknownPatch> {
        let mut set = BTreeSet::new();
        for id in ids.iter().map(|s| s.as_ref().trim()).filter(|s| !s.is_empty()) {
            if !KNOWN.contains(&id) {
                return Err(UnknownPatch(id.to_string()));
            }
            set.insert(id.to_string());
        }
        Ok(Dormant(set))
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// The SDK's activation callback: consulted only the first time a run reaches a patch
    /// outside replay, so a run that already took the new branch keeps it on every worker.
    pub fn callback(&self) -> Option<PatchActivationCallback> {
        if self.0.is_empty() {
            return None;
        }
        let dormant = self.0.clone();
        Some(Arc::new(move |input: PatchActivationInput| !dormant.contains(&input.patch_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_id_is_refused_and_blanks_are_ignored() {
        let err = Dormant::parse(&["no-such-change"]).unwrap_err();
        assert!(err.to_string().contains("\"no-such-change\""), "{err}");
        let none = Dormant::parse(&["", " "]).unwrap();
        assert!(none.callback().is_none());
    }

    #[cfg(feature = "upgrade-drill")]
    #[test]
    fn a_dormant_patch_is_not_activated() {
        let dormant = Dormant::parse(&[UPGRADE_DRILL]).unwrap();
        assert_eq!(dormant.ids().collect::<Vec<_>>(), [UPGRADE_DRILL]);
    }
}
