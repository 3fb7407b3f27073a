//! A cgroup v2 directory of the test's own, under the hierarchy's root (found
//! in /proc/mounts), removed on drop.

use std::{
    fs, io,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use floki_agent::agent::datapath::cgroup2_root;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A child cgroup for one test.
pub struct TestCgroup {
    path: PathBuf,
    root: PathBuf,
}

impl TestCgroup {
    /// Creates `<cgroup2 root>/floki-test-<pid>-<n>-<label>`.
    pub fn new(label: &str) -> io::Result<Self> {
        let root = cgroup2_root().map_err(io::Error::other)?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = root.join(format!("floki-test-{}-{n}-{label}", std::process::id()));
        fs::create_dir_all(&path)?;
        Ok(Self { path, root })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `cmd` start inside this cgroup (joined before exec, so that every
    /// socket the program creates belongs to it).
    pub fn spawn_inside<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        let procs = self.path.join("cgroup.procs");
        let procs = std::ffi::CString::new(procs.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: the closure only calls async-signal-safe functions (open,
        // write, close) on a path prepared before fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if ok {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            })
        }
    }

    /// Moves the calling process into this cgroup (for in-process clients;
    /// one test per process, as cargo-nextest runs them).
    pub fn enter(&self) -> io::Result<()> {
        fs::write(
            self.path.join("cgroup.procs"),
            std::process::id().to_string(),
        )
    }

    fn evacuate(&self) {
        // Whatever is left (this process, stray children) goes back to the root.
        if let Ok(pids) = fs::read_to_string(self.path.join("cgroup.procs")) {
            for pid in pids.lines() {
                let _ = fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // An agent that held thousands of channels (bench channels) can
        // take seconds to exit: the cgroup is busy until it has.
        for _ in 0..500 {
            self.evacuate();
            if fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
