//! The baselines' servers, started inside a node (network namespace and
//! cgroup) or on this host: s3s-fs, an S3 service keeping its objects as
//! files on local disk, and Redis, in memory without persistence. The
//! benchmarks compare Floki with them; the store's S3 tier is tested
//! against s3s-fs.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{cgroup::TestCgroup, cluster::ClusterNode};

/// Access key and secret of the benchmark's own s3s-fs.
const S3_KEY: (&str, &str) = ("floki-bench", "floki-bench-secret");
/// The bucket: a directory under the server's root.
pub const BUCKET: &str = "floki-bench";
/// Ports inside a node's namespace (nothing else listens there).
const S3_PORT: u16 = 9000;
const REDIS_PORT: u16 = 6400;

/// Where a server runs: in a namespace node, or on this host (the demo).
pub enum Place<'a> {
    Node(&'a ClusterNode),
    Host(&'a TestCgroup),
}

impl Place<'_> {
    fn command(&self, program: &Path) -> Command {
        match self {
            Self::Node(node) => node.ns.command(program),
            Self::Host(_) => Command::new(program),
        }
    }

    fn cgroup(&self) -> &TestCgroup {
        match self {
            Self::Node(node) => &node.cgroup,
            Self::Host(cgroup) => cgroup,
        }
    }

    fn name(&self) -> &str {
        match self {
            Self::Node(node) => &node.name,
            Self::Host(_) => "host",
        }
    }

    fn ip(&self) -> &str {
        match self {
            Self::Node(node) => &node.ip,
            Self::Host(_) => "127.0.0.1",
        }
    }

    /// A port to listen on: fixed in a namespace, a free one on the host.
    fn port(&self, fixed: u16) -> anyhow::Result<u16> {
        match self {
            Self::Node(_) => Ok(fixed),
            Self::Host(_) => Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port()),
        }
    }

    fn ready_probe(&self, port: u16) -> Command {
        let probe = format!(
            "for i in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && exit 0; sleep 0.05; done; exit 1"
        );
        let mut cmd = self.command(Path::new("bash"));
        cmd.args(["-c", &probe]);
        cmd
    }
}

/// Where an s3s-fs is, and its credentials.
#[derive(Clone, Debug)]
pub struct S3Endpoint {
    /// `http://HOST:PORT`.
    pub url: String,
    /// The bucket.
    pub bucket: String,
    /// Access key.
    pub key: String,
    /// Secret key.
    pub secret: String,
}

impl S3Endpoint {
    /// The `AWS_*` variables an S3 client (object_store, boto3) reads.
    pub fn env(&self) -> [(&'static str, String); 5] {
        [
            ("AWS_ENDPOINT", self.url.clone()),
            ("AWS_ACCESS_KEY_ID", self.key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
    }
}

/// A server process in a node.
pub struct Server {
    child: Child,
    /// The process to measure.
    pub pid: u32,
    port: u16,
    node: String,
    node_ip: String,
    /// s3s-fs: the directory its objects are files in.
    pub data_dir: Option<PathBuf>,
}

impl Server {
    /// s3s-fs at `place`, with its objects under `root` (on local disk).
    pub fn s3s_fs(place: &Place<'_>, root: &Path) -> anyhow::Result<Self> {
        let program = locate("s3s-fs").context(
            "s3s-fs is not installed: `cargo xtask bench paper` installs it \
             (cargo +nightly-2026-05-20 install s3s-fs --features binary)",
        )?;
        std::fs::create_dir_all(root.join(BUCKET))
            .with_context(|| format!("creating {}", root.display()))?;
        let port = place.port(S3_PORT)?;
        let mut cmd = place.command(&program);
        cmd.args(["--host", "0.0.0.0", "--port", &port.to_string()])
            .args(["--access-key", S3_KEY.0, "--secret-key", S3_KEY.1])
            .arg(root);
        let mut server = Self::spawn(place, cmd, port)?;
        server.data_dir = Some(root.join(BUCKET));
        Ok(server)
    }

    /// redis-server at `place`, without persistence.
    pub fn redis(place: &Place<'_>) -> anyhow::Result<Self> {
        let program = locate("redis-server").context(
            "redis-server is not installed: `cargo xtask bench paper` installs it (Debian's redis-server)",
        )?;
        let port = place.port(REDIS_PORT)?;
        let mut cmd = place.command(&program);
        cmd.args(["--port", &port.to_string(), "--bind", "0.0.0.0"])
            .args(["--protected-mode", "no", "--save", "", "--appendonly", "no"])
            .args(["--proto-max-bulk-len", "1gb", "--daemonize", "no"]);
        Self::spawn(place, cmd, port)
    }

    fn spawn(place: &Place<'_>, mut cmd: Command, port: u16) -> anyhow::Result<Self> {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        place.cgroup().spawn_inside(&mut cmd);
        let child = cmd.spawn().context("starting a server")?;
        let server = Self {
            pid: child.id(),
            child,
            port,
            node: place.name().to_owned(),
            node_ip: place.ip().to_owned(),
            data_dir: None,
        };
        // Ready once it accepts connections, seen from where it runs.
        let ready = place
            .ready_probe(port)
            .status()
            .context("waiting for a server")?;
        if !ready.success() {
            bail!("a server did not start listening on port {port} within 10 s");
        }
        Ok(server)
    }

    /// The server's address as seen from the node named `from`.
    fn host_for(&self, from: &str) -> &str {
        if from == self.node {
            "127.0.0.1"
        } else {
            &self.node_ip
        }
    }

    /// How a client on node `from` (or on the host) reaches this s3s-fs.
    pub fn s3_endpoint(&self, from: &str) -> S3Endpoint {
        S3Endpoint {
            url: format!("http://{}:{}", self.host_for(from), self.port),
            bucket: BUCKET.to_owned(),
            key: S3_KEY.0.to_owned(),
            secret: S3_KEY.1.to_owned(),
        }
    }

    /// How a client on node `from` reaches this Redis.
    pub fn redis_url(&self, from: &str) -> String {
        format!("redis://{}:{}/", self.host_for(from), self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A program on the PATH or in ~/.cargo/bin.
fn locate(name: &str) -> Option<PathBuf> {
    let cargo_bin = std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo/bin"));
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(cargo_bin)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}
