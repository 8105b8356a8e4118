//! The helper every per-operation check uses: [`Checker`] holds the
//! operation and the group's facts and turns each kind of broken rule
//! (wrong role, wrong state, precondition, limit) into a [`Refusal`] that
//! names the rule and the fact that broke it, or builds the [`Transition`]
//! of an accepted operation.

use super::{GroupView, Refusal, RefusalReason};
use crate::control::model::{GroupState, OpKind, Outcome, Role, Transition};

fn state_list(states: &[GroupState]) -> String {
    let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    match names.len() {
        0 => String::from("no state"),
        1 => names[0].to_owned(),
        n => format!("{} or {}", names[..n - 1].join(", "), names[n - 1]),
    }
}

/// The operation being checked and the group it is checked against, with
/// the helpers that turn a broken rule into a [`Refusal`].
pub(super) struct Checker<'a> {
    pub(super) op: OpKind,
    pub(super) g: &'a GroupView,
}

impl Checker<'_> {
    pub(super) fn refuse(&self, reason: RefusalReason, rule: String, context: String) -> Refusal {
        Refusal {
            op: self.op,
            subject: format!("group '{}'", self.g.name),
            role: Some(self.g.role),
            state: Some(self.g.state),
            reason,
            rule,
            context,
        }
    }

    pub(super) fn is_state(&self) -> String {
        format!("group '{}' is {}", self.g.name, self.g.state)
    }

    pub(super) fn role(&self, role: Role) -> Result<(), Refusal> {
        if self.g.role == role {
            return Ok(());
        }
        Err(self.refuse(
            RefusalReason::WrongRole,
            format!("{} is allowed only on a {role} group", self.op.human()),
            format!("group '{}' is a {} group", self.g.name, self.g.role),
        ))
    }

    pub(super) fn not_new_primary(&self) -> Result<(), Refusal> {
        if !self.g.new_primary {
            return Ok(());
        }
        Err(self.refuse(
            RefusalReason::WrongRole,
            format!(
                "{} is not allowed on a new primary; protect it again with a new group",
                self.op.human()
            ),
            format!("group '{}' failed over and is a new primary", self.g.name),
        ))
    }

    /// Refuses while a DR drill runs on the group (its volumes and pinned
    /// point would go with what the operation deletes).
    pub(super) fn no_drill(&self) -> Result<(), Refusal> {
        match self.g.drill {
            None => Ok(()),
            Some(phase) => Err(self.refuse(
                RefusalReason::Precondition,
                format!(
                    "{} is refused while a drill runs; end it first with drill --end",
                    self.op.human()
                ),
                format!("group '{}' has a drill {phase}", self.g.name),
            )),
        }
    }

    pub(super) fn state_in(&self, allowed: &[GroupState]) -> Result<(), Refusal> {
        if allowed.contains(&self.g.state) {
            return Ok(());
        }
        Err(self.refuse(
            RefusalReason::WrongState,
            format!(
                "{} is allowed only in {}",
                self.op.human(),
                state_list(allowed)
            ),
            self.is_state(),
        ))
    }

    pub(super) fn state_not_in(&self, forbidden: &[GroupState]) -> Result<(), Refusal> {
        if !forbidden.contains(&self.g.state) {
            return Ok(());
        }
        Err(self.refuse(
            RefusalReason::WrongState,
            format!(
                "{} on a {} group is not allowed in {}",
                self.op.human(),
                self.g.role,
                state_list(forbidden)
            ),
            self.is_state(),
        ))
    }

    pub(super) fn precondition(
        &self,
        ok: bool,
        rule: &str,
        context: String,
    ) -> Result<(), Refusal> {
        self.require(ok, RefusalReason::Precondition, rule, context)
    }

    pub(super) fn limit(&self, ok: bool, rule: &str, context: String) -> Result<(), Refusal> {
        self.require(ok, RefusalReason::Limit, rule, context)
    }

    fn require(
        &self,
        ok: bool,
        reason: RefusalReason,
        rule: &str,
        context: String,
    ) -> Result<(), Refusal> {
        if ok {
            Ok(())
        } else {
            Err(self.refuse(reason, rule.to_owned(), context))
        }
    }

    /// A transition that keeps the group where it is.
    pub(super) fn stay(&self) -> Transition {
        let s = self.g.state;
        Transition {
            op: self.op,
            from: s,
            during: s,
            on_success: self.group(s),
            on_failure: s,
        }
    }

    pub(super) fn via(
        &self,
        during: GroupState,
        success: GroupState,
        failure: GroupState,
    ) -> Transition {
        Transition {
            op: self.op,
            from: self.g.state,
            during,
            on_success: self.group(success),
            on_failure: failure,
        }
    }

    fn group(&self, state: GroupState) -> Outcome {
        Outcome::Group {
            state,
            role: self.g.role,
            new_primary: self.g.new_primary,
            migrated: self.g.migrated,
        }
    }
}
