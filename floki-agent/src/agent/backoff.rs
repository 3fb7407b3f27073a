//! What a door does when `accept` fails (out of descriptors, out of
//! memory): it waits before trying again, longer each time, and says so at
//! most once a second, instead of spinning and flooding the log while the
//! channels it serves wait.

use std::time::{Duration, Instant};

use tracing::warn;

const FIRST: Duration = Duration::from_millis(5);
const LONGEST: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(1);

/// The backoff of one door.
pub struct AcceptBackoff {
    door: &'static str,
    wait: Duration,
    logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptBackoff {
    /// The backoff of the door called `door` in the log.
    pub fn new(door: &'static str) -> Self {
        Self {
            door,
            wait: FIRST,
            logged: None,
            unlogged: 0,
        }
    }

    /// An accept succeeded: the next failure waits the shortest time.
    pub fn succeeded(&mut self) {
        self.wait = FIRST;
    }

    /// An accept failed: log (rate-limited) and wait.
    pub async fn failed(&mut self, err: &std::io::Error) {
        if self.logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            warn!(
                door = self.door,
                %err,
                more = self.unlogged,
                retry_in = ?self.wait,
                "accepting a connection failed (more: failures since the last line); if it says too many open files, raise the agent's descriptor limit"
            );
            self.logged = Some(Instant::now());
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        tokio::time::sleep(self.wait).await;
        self.wait = (self.wait * 2).min(LONGEST);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failures_wait_longer_each_time_up_to_a_second_and_reset_on_success() {
        let mut backoff = AcceptBackoff::new("test");
        let err = std::io::Error::from_raw_os_error(libc::EMFILE);
        let start = tokio::time::Instant::now();
        for _ in 0..12 {
            backoff.failed(&err).await;
        }
        // 5+10+...+640 ms, then 1 s at most each: never a spin.
        assert!(start.elapsed() >= Duration::from_millis(1275 + 4000));
        assert_eq!(backoff.wait, LONGEST);
        assert!(backoff.unlogged >= 10);
        backoff.succeeded();
        assert_eq!(backoff.wait, FIRST);
    }
}
