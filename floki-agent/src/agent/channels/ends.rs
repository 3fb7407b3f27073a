//! A channel's two ends as the core sees them: whether each joined, what it
//! reported, and the channel's verdict once both are over.

use floki_proto::control::{ClientReport, Role};

/// One end of a channel.
#[derive(Clone, Debug, Default)]
pub(super) struct End {
    pub joined: bool,
    /// Stream bytes it reported.
    pub bytes: u64,
    pub outcome: Option<Outcome>,
}

/// How an end's stream ended, as far as the agent knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// It reported a complete, verified stream.
    Complete,
    /// It reported a failure.
    Failed(String),
    /// It left without a final report (it exited right after the stream, or
    /// was killed), or it reports to another node's agent.
    Left,
}

/// Both ends, indexed by role.
#[derive(Clone, Debug, Default)]
pub(super) struct Ends([End; 2]);

fn slot(role: Role) -> usize {
    match role {
        Role::Send => 0,
        Role::Recv => 1,
    }
}

impl Ends {
    /// Ends of which `role` joined.
    pub fn joined(role: Role) -> Self {
        let mut ends = Self::default();
        ends[role].joined = true;
        ends
    }

    /// Records a report of `role`.
    pub fn report(&mut self, role: Role, report: ClientReport) {
        let end = &mut self[role];
        match report {
            // A lent link given back unread: the end leaves (its session
            // drops it), with nothing moved.
            ClientReport::Waiting { .. } | ClientReport::LinkUnread => {}
            ClientReport::Progress { bytes } => end.bytes = bytes,
            ClientReport::Done { ok, bytes, error } => {
                end.bytes = bytes;
                end.outcome = Some(if ok {
                    Outcome::Complete
                } else {
                    Outcome::Failed(error.unwrap_or_else(|| "failed without a reason".into()))
                });
            }
        }
    }

    /// `role` left; what it reported before stands.
    pub fn left(&mut self, role: Role) {
        self[role].outcome.get_or_insert(Outcome::Left);
    }

    /// Whether both ends are over.
    pub fn over(&self) -> bool {
        self.0.iter().all(|end| end.outcome.is_some())
    }

    /// The most stream bytes an end reported.
    pub fn stream_bytes(&self) -> u64 {
        self.0.iter().map(|end| end.bytes).max().unwrap_or(0)
    }

    /// The roles that joined.
    pub fn roles(&self) -> Vec<Role> {
        [Role::Send, Role::Recv]
            .into_iter()
            .filter(|role| self[*role].joined)
            .collect()
    }

    /// The channel's verdict once both ends are over. A sender only reports
    /// success after the receiver acknowledged a verified stream, and a
    /// receiver only after verifying the end mark, so one `Complete` end
    /// proves the stream whole even when the other left without a word.
    pub fn verdict(&self) -> Result<(), String> {
        let errors: Vec<String> = [Role::Send, Role::Recv]
            .into_iter()
            .filter_map(|role| match &self[role].outcome {
                Some(Outcome::Failed(err)) => Some(format!("{role}: {err}")),
                _ => None,
            })
            .collect();
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        if self
            .0
            .iter()
            .any(|end| end.outcome == Some(Outcome::Complete))
        {
            Ok(())
        } else {
            Err("both ends disconnected without reporting the end of the stream".into())
        }
    }
}

impl std::ops::Index<Role> for Ends {
    type Output = End;

    fn index(&self, role: Role) -> &End {
        &self.0[slot(role)]
    }
}

impl std::ops::IndexMut<Role> for Ends {
    fn index_mut(&mut self, role: Role) -> &mut End {
        &mut self.0[slot(role)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(sender: Option<Outcome>, receiver: Option<Outcome>) -> Ends {
        let mut ends = Ends::joined(Role::Send);
        ends[Role::Recv].joined = true;
        ends[Role::Send].outcome = sender;
        ends[Role::Recv].outcome = receiver;
        ends
    }

    #[test]
    fn one_complete_end_proves_the_stream() {
        for (a, b) in [
            (Outcome::Complete, Outcome::Left),
            (Outcome::Left, Outcome::Complete),
            (Outcome::Complete, Outcome::Complete),
        ] {
            assert_eq!(ends(Some(a), Some(b)).verdict(), Ok(()));
        }
    }

    #[test]
    fn failures_and_silence_fail_the_channel() {
        let failed = ends(Some(Outcome::Complete), Some(Outcome::Failed("x".into())));
        assert_eq!(failed.verdict(), Err("receiver: x".into()));
        assert!(
            ends(Some(Outcome::Left), Some(Outcome::Left))
                .verdict()
                .is_err()
        );
    }

    #[test]
    fn a_final_report_is_not_undone_by_leaving() {
        let mut ends = Ends::joined(Role::Send);
        ends.report(
            Role::Send,
            ClientReport::Done {
                ok: true,
                bytes: 5,
                error: None,
            },
        );
        ends.left(Role::Send);
        assert_eq!(ends[Role::Send].outcome, Some(Outcome::Complete));
        assert!(!ends.over());
    }
}
