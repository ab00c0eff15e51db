//! Deadlines in one table (STYLE.md rule 14): `poll_timeout` is the table's minimum, and
//! `handle_timeout` asks the table which deadline is due.

use std::time::Instant;

/// A kind of deadline a machine keeps; its index is its slot in a [`TimerTable`].
pub(crate) trait TimerKind: Copy {
    /// Number of kinds.
    const COUNT: usize;
    /// This kind's slot, below `COUNT`.
    fn index(self) -> usize;
}

/// One optional deadline per timer kind.
#[derive(Debug, Clone)]
pub(crate) struct TimerTable<const N: usize> {
    at: [Option<Instant>; N],
}

impl<const N: usize> TimerTable<N> {
    pub(crate) const fn new() -> Self {
        Self { at: [None; N] }
    }

    pub(crate) fn set<K: TimerKind>(&mut self, kind: K, at: Instant) {
        self.at[kind.index()] = Some(at);
    }

    pub(crate) fn clear<K: TimerKind>(&mut self, kind: K) {
        self.at[kind.index()] = None;
    }

    pub(crate) fn get<K: TimerKind>(&self, kind: K) -> Option<Instant> {
        self.at[kind.index()]
    }

    /// Whether `kind` is armed and due at `now`.
    pub(crate) fn is_due<K: TimerKind>(&self, kind: K, now: Instant) -> bool {
        self.get(kind).is_some_and(|at| at <= now)
    }

    /// The earliest armed deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }
}
