//! A real `floki-agent run` process for one test, attached to the test's
//! cgroup, with its own admin socket, pin directory and port.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{agent_binary, cgroup::TestCgroup};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How to start a test agent.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// `--no-ebpf`.
    pub no_ebpf: bool,
    /// `--window`.
    pub window: Option<String>,
    /// Listen on all addresses (for clients in other network namespaces).
    pub listen_all: bool,
    /// Run inside this network namespace (`nsenter --net`).
    pub netns: Option<String>,
    /// `--listen` (default `127.0.0.1:0`, or `0.0.0.0:0` with `listen_all`).
    pub listen: Option<String>,
    /// Leave `--listen` out: the agent's own default (127.0.0.1:7878).
    pub default_listen: bool,
    /// `--node` (default `test-node`).
    pub node: Option<String>,
    /// More arguments.
    pub extra: Vec<String>,
    /// More environment variables.
    pub env: Vec<(String, String)>,
    /// `RUST_LOG` for the agent [default: `FLOKI_TEST_AGENT_LOG`, else
    /// `info,floki_agent=debug`].
    pub rust_log: Option<String>,
}

/// A running agent, killed on drop.
pub struct TestAgent {
    child: Option<Child>,
    /// Channel address.
    pub addr: SocketAddr,
    /// Admin socket.
    pub admin: PathBuf,
    /// The clients' Unix socket.
    pub socket: PathBuf,
    /// bpffs pin directory.
    pub pin_dir: PathBuf,
    dir: PathBuf,
    /// Whether dropping this handle removes the directories (not when a
    /// relaunched agent took them over).
    owns_files: bool,
}

impl TestAgent {
    /// Starts an agent attached to `cgroup` and waits until it serves status.
    pub fn start(cgroup: &TestCgroup, opts: AgentOptions) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("floki-test-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&tag);
        Self::launch(cgroup, opts, dir, pin_dir)
    }

    /// Starts a new agent process in the place of this one (same admin socket
    /// and pin directory), as a restart after a crash would; the old process
    /// is reaped (killed first if still running).
    pub fn relaunch(&mut self, cgroup: &TestCgroup, opts: AgentOptions) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let next = Self::launch(cgroup, opts, self.dir.clone(), self.pin_dir.clone());
        let mut previous = std::mem::replace(self, next);
        previous.owns_files = false;
    }

    fn launch(cgroup: &TestCgroup, opts: AgentOptions, dir: PathBuf, pin_dir: PathBuf) -> Self {
        fs::create_dir_all(&dir).expect("test dir");
        let admin = dir.join("agent.sock");
        let socket = dir.join("floki.sock");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .expect("agent log");
        let listen = match &opts.listen {
            Some(listen) => listen.as_str(),
            None if opts.listen_all => "0.0.0.0:0",
            None => "127.0.0.1:0",
        };
        let mut cmd = match &opts.netns {
            Some(netns) => {
                // Never start a namespaced agent anywhere else: its peers'
                // private addresses must not leave the namespaces.
                assert!(
                    std::path::Path::new("/var/run/netns").join(netns).exists(),
                    "network namespace {netns} does not exist"
                );
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net=/var/run/netns/{netns}"))
                    .arg("--")
                    .arg(agent_binary());
                cmd
            }
            None => Command::new(agent_binary()),
        };
        let node = opts.node.as_deref().unwrap_or("test-node");
        cmd.arg("run");
        if !opts.default_listen {
            cmd.args(["--listen", listen]);
        }
        cmd.args(["--node", node])
            .arg("--admin")
            .arg(&admin)
            .arg("--socket")
            .arg(&socket)
            .arg("--cgroup")
            .arg(cgroup.path())
            .arg("--pin-dir")
            .arg(&pin_dir)
            .args(["--shutdown-grace", "10"])
            // Benchmarks that count the agents' disk writes quiet them
            // (FLOKI_TEST_AGENT_LOG=warn): a log line is a disk write too.
            .env(
                "RUST_LOG",
                opts.rust_log.clone().unwrap_or_else(|| {
                    std::env::var("FLOKI_TEST_AGENT_LOG")
                        .unwrap_or_else(|_| "info,floki_agent=debug".into())
                }),
            )
            .stdout(Stdio::null())
            .stderr(log);
        if opts.no_ebpf {
            cmd.arg("--no-ebpf");
        }
        if let Some(window) = &opts.window {
            cmd.args(["--window", window]);
        }
        // The store's spill directory: the test's own, unless it gives one.
        if !opts.extra.iter().any(|arg| arg == "--store-dir") {
            cmd.arg("--store-dir").arg(dir.join("store"));
        }
        cmd.args(&opts.extra);
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        // As on a node where sock_ops sits at the cgroup root: the agent's own
        // sockets (those it connects to consumers) are in the cgroup too.
        cgroup.spawn_inside(&mut cmd);
        let child = cmd.spawn().expect("spawning floki-agent run");
        let mut agent = Self {
            child: Some(child),
            addr: "127.0.0.1:0".parse().expect("addr"),
            admin,
            socket,
            pin_dir,
            dir,
            owns_files: true,
        };
        let status = agent.wait_ready();
        let port: u16 = status["listen"]
            .as_str()
            .and_then(|s| s.parse::<SocketAddr>().ok())
            .map(|a| a.port())
            .unwrap_or_else(|| panic!("status has no listen address: {status}"));
        agent.addr = SocketAddr::from(([127, 0, 0, 1], port));
        agent
    }

    /// The store's spill directory (`--store-dir`), kept across a relaunch.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }

    fn wait_ready(&mut self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            if let Some(exit) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "floki-agent exited ({exit}) before serving:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "floki-agent did not serve status within 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn try_status(&self) -> Option<Value> {
        if !self.admin.exists() {
            return None;
        }
        let out = Command::new(agent_binary())
            .args(["status", "--json", "--admin"])
            .arg(&self.admin)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// `floki-agent status --json`, parsed.
    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| panic!("status failed; agent log:\n{}", self.log()))
    }

    /// `floki-agent status` as an operator reads it.
    pub fn status_text(&self) -> String {
        let out = Command::new(agent_binary())
            .args(["status", "--admin"])
            .arg(&self.admin)
            .output()
            .expect("running floki-agent status");
        assert!(
            out.status.success(),
            "status failed; agent log:\n{}",
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The status entry of the newest channel called `name`.
    pub fn channel(&self, name: &str) -> Value {
        let status = self.status();
        status["channels"]
            .as_array()
            .and_then(|channels| channels.iter().find(|c| c["name"] == name).cloned())
            .unwrap_or_else(|| panic!("channel {name} not in status: {status:#}"))
    }

    /// Waits until adopted channel `name` is `closed` (its sockets closed
    /// after a restart), and returns its entry.
    pub fn wait_closed(&self, name: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let channel = self.channel(name);
            if channel["state"] != "active" {
                assert_eq!(channel["state"], "closed", "{channel:#}");
                return channel;
            }
            assert!(
                Instant::now() < deadline,
                "channel {name} still active after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until channel `name` is done or failed, and returns its entry.
    pub fn wait_finished(&self, name: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let channel = self.channel(name);
            if channel["state"] == "done" || channel["state"] == "failed" {
                return channel;
            }
            assert!(
                Instant::now() < deadline,
                "channel {name} still {} after {limit:?}",
                channel["state"]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A `floki-agent` client command (`send`, `recv`) aimed at this agent.
    pub fn client(&self, verb: &str, channel: &str) -> Command {
        let mut cmd = Command::new(agent_binary());
        cmd.arg(verb)
            .arg(channel)
            .arg("--agent")
            .arg(self.addr.to_string());
        cmd
    }

    /// A `floki-agent` client command aimed at this agent's Unix socket.
    pub fn local_client(&self, verb: &str, channel: &str) -> Command {
        let mut cmd = Command::new(agent_binary());
        cmd.arg(verb)
            .arg(channel)
            .arg("--agent")
            .arg(format!("unix:{}", self.socket.display()));
        cmd
    }

    /// `floki-agent apply` of `yaml` on this agent; returns the token.
    pub fn apply(&self, yaml: &str) -> Result<String, String> {
        let path = self.dir.join(format!(
            "workflow-{}.yaml",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&path, yaml).expect("writing the spec");
        let out = Command::new(agent_binary())
            .arg("apply")
            .arg(&path)
            .arg("--admin")
            .arg(&self.admin)
            .output()
            .expect("running floki-agent apply");
        let _ = fs::remove_file(&path);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `floki-agent delete NAME` on this agent.
    pub fn delete(&self, name: &str) -> Result<(), String> {
        let out = Command::new(agent_binary())
            .args(["delete", name, "--admin"])
            .arg(&self.admin)
            .output()
            .expect("running floki-agent delete");
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kills the agent with SIGKILL, as a crash would (reaped by
    /// [`TestAgent::relaunch`] or on drop).
    pub fn kill(&self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.pid() as i32, libc::SIGKILL) };
    }

    /// Prints the end of the agent's log to stderr, for a run that failed
    /// (CI keeps nothing else).
    pub fn print_log_tail(&self) {
        let log = self.log();
        let start = log.len().saturating_sub(LOG_TAIL);
        let start = (start..log.len())
            .find(|&i| log.is_char_boundary(i))
            .unwrap_or(log.len());
        eprintln!(
            "--- the end of agent log {} ---\n{}",
            self.dir.display(),
            &log[start..]
        );
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit success.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// The directory holding the agent's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// How much of a failed test's agent log is printed (its end).
const LOG_TAIL: usize = 64 * 1024;

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A failed test shows what its agent said: CI keeps nothing else.
        if std::thread::panicking() {
            self.print_log_tail();
        }
        if self.owns_files {
            let _ = fs::remove_dir_all(&self.pin_dir);
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
