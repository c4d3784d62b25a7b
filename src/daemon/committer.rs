//! The daemon's second thread: it commits ban batches and writes log
//! lines while a backlog is read.
//!
//! nf_tables does its per-element work (insertion, a transaction record,
//! a notification per listener) inside `sendmsg`, on the sending thread:
//! some 2 µs per element, about what reading the journal entry that led to
//! the ban costs. Sent from the loop, the two add up. While a drain reads
//! on, the daemon hands its batches to this thread instead, so reading and
//! committing overlap on two cores. Before a drain ends, the daemon waits
//! for every batch ([`Committer::wait`]) and only then logs and saves, so
//! a saved position still means "everything before it is in the kernel".
//! The `Found`/`Ban` lines then come here too (see `lines.rs`): written
//! after the bans they report, in order, without holding up the loop.
//!
//! The thread owns a [`Firewall::sibling`]: a socket of its own, whose
//! changes the daemon's watch counts as banjo's. Jobs are done in the
//! order they were handed over, and batches' outcomes come back in that
//! order.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::{self, JoinHandle};

use super::lines::Batch;
use crate::firewall::{self, Element, Firewall};
use crate::ticket::Ban;

/// What the thread is asked to do.
enum Job {
    Commit(Vec<Element>),
    Write(Batch),
}

/// A batch the thread is done with: its bans, and whether the kernel took
/// them (`Err` also when the thread is gone).
pub(super) type Committed = (Vec<Ban>, Result<(), CommitError>);

/// Why a handed-over batch did not land.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The kernel refused the batch.
    #[error(transparent)]
    Firewall(#[from] firewall::Error),
    /// The thread stopped before committing the batch.
    #[error("the thread committing bans stopped")]
    Gone,
}

/// The daemon's end of the committing thread.
pub(super) struct Committer {
    /// `None` once dropping: closing the channel ends the thread.
    jobs: Option<Sender<Job>>,
    outcomes: Receiver<Result<(), firewall::Error>>,
    /// The bans of each batch handed over and not yet reported, oldest
    /// first (the thread answers in order).
    in_flight: VecDeque<Vec<Ban>>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    /// Starts the thread; it idles on its channel until a batch comes.
    pub(super) fn start(mut firewall: Firewall) -> std::io::Result<Committer> {
        let (jobs, job_queue) = mpsc::channel::<Job>();
        let (outcome_tx, outcomes) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("banjo-commit".into())
            .spawn(move || work(&mut firewall, &job_queue, &outcome_tx))?;
        Ok(Committer {
            jobs: Some(jobs),
            outcomes,
            in_flight: VecDeque::new(),
            thread: Some(thread),
        })
    }

    /// Hands `bans` over. If the thread is gone, gives them back for the
    /// caller to commit itself.
    pub(super) fn submit(
        &mut self,
        bans: Vec<Ban>,
        elements: Vec<Element>,
    ) -> Result<(), (Vec<Ban>, Vec<Element>)> {
        match self.hand(Job::Commit(elements)) {
            Ok(()) => {
                self.in_flight.push_back(bans);
                Ok(())
            }
            Err(Job::Commit(elements)) => Err((bans, elements)),
            Err(Job::Write(_)) => unreachable!("a batch handed over came back as lines"),
        }
    }

    /// Hands `lines` over, to be written after every job handed over
    /// before them. If the thread is gone, gives them back for the caller
    /// to write itself.
    pub(super) fn write(&mut self, lines: Batch) -> Result<(), Batch> {
        match self.hand(Job::Write(lines)) {
            Ok(()) => Ok(()),
            Err(Job::Write(lines)) => Err(lines),
            Err(Job::Commit(_)) => unreachable!("lines handed over came back as a batch"),
        }
    }

    /// Queues `job`; gives it back if the thread is gone.
    fn hand(&mut self, job: Job) -> Result<(), Job> {
        match &self.jobs {
            Some(jobs) => jobs.send(job).map_err(|mpsc::SendError(job)| job),
            None => Err(job),
        }
    }

    /// Waits until the thread has done every job handed over (the lines
    /// written), for a stop; the thread is gone afterwards.
    pub(super) fn finish(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// The next batch the thread is done with, without waiting.
    pub(super) fn try_done(&mut self) -> Option<Committed> {
        self.in_flight.front()?;
        match self.outcomes.try_recv() {
            Ok(outcome) => self.report(outcome.map_err(CommitError::from)),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => self.report(Err(CommitError::Gone)),
        }
    }

    /// The next batch the thread is done with, waiting for it; `None` when
    /// nothing is in flight.
    pub(super) fn wait(&mut self) -> Option<Committed> {
        self.in_flight.front()?;
        let outcome = match self.outcomes.recv() {
            Ok(outcome) => outcome.map_err(CommitError::from),
            Err(mpsc::RecvError) => Err(CommitError::Gone),
        };
        self.report(outcome)
    }

    fn report(&mut self, outcome: Result<(), CommitError>) -> Option<Committed> {
        Some((self.in_flight.pop_front()?, outcome))
    }
}

/// Lines written between two looks for batches to commit.
const LINES_BETWEEN_LOOKS: usize = 256;

/// The thread: batches are committed as they come, ahead of lines still to
/// be written (a ban's lines are only handed over once it has landed, so
/// they stay behind it); lines are written in order, a few hundred (under
/// a millisecond) at a time. Ends when the channel closes, the lines all
/// written.
fn work(
    firewall: &mut Firewall,
    jobs: &Receiver<Job>,
    outcomes: &Sender<Result<(), firewall::Error>>,
) {
    let mut to_write: VecDeque<Batch> = VecDeque::new();
    loop {
        let job = match to_write.is_empty() {
            true => jobs.recv().ok(),
            false => jobs.try_recv().ok(),
        };
        match job {
            Some(Job::Commit(elements)) => {
                if outcomes.send(firewall.add(&elements)).is_err() {
                    return;
                }
                continue;
            }
            Some(Job::Write(batch)) => {
                to_write.push_back(batch);
                continue;
            }
            // Closed with nothing left to write.
            None if to_write.is_empty() => return,
            None => {}
        }
        if let Some(batch) = to_write.front_mut() {
            if !batch.write_some(LINES_BETWEEN_LOOKS) {
                to_write.pop_front();
            }
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.finish();
    }
}
