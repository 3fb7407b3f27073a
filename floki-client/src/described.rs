//! Edges this process has described. An agent keeps a workflow's token only
//! while its spec stays the same: applying a changed spec (or applying it
//! again after a delete) gives it a new token. So an edge described under a
//! token looks the same for as long as that token is good, and a warm
//! function that opens its streams run after run asks the agent once, not
//! once per run. A token the agent no longer knows fails the hellos that
//! follow with the same `not_allowed` a describe request would have had.

use std::sync::{
    Mutex, MutexGuard, PoisonError, TryLockError,
    atomic::{AtomicU32, Ordering},
};

use crate::workflow::{EdgeInfo, EdgeOptions};

/// The most edges kept (a function has a few, a bridge or a benchmark
/// driving many streams some hundreds; past this they are all forgotten and
/// asked again). An answer is a few hundred bytes.
const MAX_EDGES: usize = 1024;

/// Who asked what: the agent, then the workflow, token, edge and function.
type Asked = [String; 5];

/// The answers, with the process that holds them (a forked child asks
/// again: it may run as another function).
struct Answers {
    pid: u32,
    edges: Vec<(Asked, EdgeInfo)>,
}

static ANSWERS: Mutex<Answers> = Mutex::new(Answers {
    pid: 0,
    edges: Vec::new(),
});

fn asked(opts: &EdgeOptions) -> Asked {
    [
        opts.agent.clone(),
        opts.workflow.clone(),
        opts.token.clone(),
        opts.edge.clone(),
        opts.function.clone(),
    ]
}

/// The process whose threads share the answers. Only there does a caller
/// wait for the lock (held for a lookup at a time); a child forked while
/// its parent held it would wait for ever, so a process that is not this
/// one only tries it, and asks the agent if it is held.
static USER: AtomicU32 = AtomicU32::new(0);

/// The answers; `None` only in a forked child that finds the lock held.
fn answers() -> Option<MutexGuard<'static, Answers>> {
    let pid = std::process::id();
    let user = USER.load(Ordering::Acquire);
    let mut answers = if user == pid || user == 0 {
        // Named before the lock is first taken: a child forked while this
        // process holds it knows not to wait.
        USER.store(pid, Ordering::Release);
        ANSWERS.lock().unwrap_or_else(PoisonError::into_inner)
    } else {
        match ANSWERS.try_lock() {
            Ok(answers) => answers,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        }
    };
    if answers.pid != pid {
        answers.edges.clear();
        answers.pid = pid;
        USER.store(pid, Ordering::Release);
    }
    Some(answers)
}

/// What the agent said about this edge before, under the same token.
pub(crate) fn get(opts: &EdgeOptions) -> Option<EdgeInfo> {
    let key = asked(opts);
    let answers = answers()?;
    answers
        .edges
        .iter()
        .find(|(asked, _)| *asked == key)
        .map(|(_, info)| info.clone())
}

/// Keeps the agent's answer about this edge.
pub(crate) fn put(opts: &EdgeOptions, info: &EdgeInfo) {
    let key = asked(opts);
    let Some(mut answers) = answers() else {
        return;
    };
    if answers.edges.iter().any(|(asked, _)| *asked == key) {
        return;
    }
    if answers.edges.len() >= MAX_EDGES {
        answers.edges.clear();
    }
    answers.edges.push((key, info.clone()));
}

#[cfg(test)]
mod tests {
    use floki_proto::control::{Pattern, Role};

    use super::*;

    fn info(peers: &[&str]) -> EdgeInfo {
        EdgeInfo {
            pattern: Pattern::Shuffle,
            role: Role::Send,
            peers: peers.iter().map(|p| (*p).to_owned()).collect(),
            buffer: 1 << 20,
        }
    }

    #[test]
    fn an_answer_is_kept_under_its_token_only() {
        let opts = EdgeOptions::new("unix:/run/floki/a.sock", "wf", "t1", "e", "p");
        assert_eq!(get(&opts), None);
        put(&opts, &info(&["q", "r"]));
        assert_eq!(get(&opts), Some(info(&["q", "r"])));
        // The spec applied again, changed: a new token, asked anew.
        let reapplied = EdgeOptions::new("unix:/run/floki/a.sock", "wf", "t2", "e", "p");
        assert_eq!(get(&reapplied), None);
        // Another function or agent does not see it either.
        let other = EdgeOptions::new("unix:/run/floki/a.sock", "wf", "t1", "e", "q");
        assert_eq!(get(&other), None);
        let elsewhere = EdgeOptions::new("unix:/run/floki/b.sock", "wf", "t1", "e", "p");
        assert_eq!(get(&elsewhere), None);
    }

    #[test]
    fn an_answer_given_while_another_thread_looks_is_kept() {
        let opts = EdgeOptions::new("unix:/run/floki/c.sock", "wf", "t1", "e", "p");
        let looking = answers().expect("this process's answers");
        let putting = std::thread::spawn({
            let opts = opts.clone();
            move || put(&opts, &info(&["q"]))
        });
        // The other thread's put waits for this look to end.
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(looking);
        putting.join().expect("the putting thread");
        assert_eq!(get(&opts), Some(info(&["q"])));
    }
}
