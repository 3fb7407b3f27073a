//! Network namespaces with veth pairs: several hosts on one machine, on
//! private addresses that exist only inside them.

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Moves the calling thread into a network namespace of its own, with its
/// loopback up and `net.ipv4.ip_local_port_range` set to `port_range` in
/// it. Threads and processes it starts afterwards are in it too: call it
/// before any other thread starts.
pub fn enter_own(port_range: &str) -> std::io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
    ip(&["link", "set", "lo", "up"]);
    // Per namespace: written from inside this one.
    std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", port_range)
}

/// A network namespace, deleted on drop (its veth ends go with it).
pub struct NetNs {
    name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// Creates a namespace with its loopback up.
    pub fn new(label: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("fk{}-{n}-{label}", std::process::id());
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Links this namespace to the caller's with a veth pair: `host_addr`
    /// (CIDR) on the caller's side, `ns_addr` (CIDR) inside.
    pub fn veth_to_host(&self, host_addr: &str, ns_addr: &str) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let host_if = format!("fkh{}{n}", std::process::id() % 10000);
        let ns_if = format!("fkn{}{n}", std::process::id() % 10000);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &self.name,
        ]);
        ip(&["addr", "add", host_addr, "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &self.name, "addr", "add", ns_addr, "dev", &ns_if]);
        ip(&["-n", &self.name, "link", "set", &ns_if, "up"]);
    }

    /// `program` run inside the namespace. `nsenter --net` switches the
    /// network namespace only: /sys and the cgroup paths stay the host's
    /// (`ip netns exec` would remount /sys).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Adds a veth pair between this namespace and bridge `bridge` of the
    /// caller's namespace, with `ns_addr` (CIDR) inside.
    pub fn veth_to_bridge(&self, bridge: &str, ns_addr: &str) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let host_if = format!("fkv{}{n}", std::process::id() % 10000);
        let ns_if = format!("fkw{}{n}", std::process::id() % 10000);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &self.name,
        ]);
        ip(&["link", "set", &host_if, "master", bridge]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &self.name, "addr", "add", ns_addr, "dev", &ns_if]);
        ip(&["-n", &self.name, "link", "set", &ns_if, "up"]);
    }
}

/// A Linux bridge in the caller's namespace, deleted on drop.
pub struct Bridge {
    name: String,
}

impl Bridge {
    /// Creates an up bridge without addresses: traffic between namespaces
    /// stays on it.
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("fkb{}{n}", std::process::id() % 10000);
        ip(&["link", "add", &name, "type", "bridge"]);
        ip(&["link", "set", &name, "up"]);
        Self { name }
    }

    /// Its interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Default for Bridge {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "delete", &self.name])
            .output();
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}
