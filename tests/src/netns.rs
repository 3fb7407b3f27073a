//! Network namespaces with veth pairs: several hosts on one machine, on
//! private addresses that exist only inside them.

use std::{
    process::Command,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// This process's namespaces and bridges not deleted yet, each with the
/// `ip` object it is (`netns`, `link`): what [`delete_owned`] removes when
/// a signal stops the process before its destructors run. (A namespace's
/// veth ends go with it.)
static OWNED: Mutex<Vec<(&str, String)>> = Mutex::new(Vec::new());

fn owned() -> std::sync::MutexGuard<'static, Vec<(&'static str, String)>> {
    OWNED.lock().unwrap_or_else(PoisonError::into_inner)
}

fn own(object: &'static str, name: &str) {
    owned().push((object, name.to_owned()));
}

fn disown(name: &str) {
    owned().retain(|(_, owned)| owned != name);
}

/// Deletes every namespace and bridge this process made and has not
/// deleted yet: for a program stopped by a signal (`floki-lab` on Ctrl-C).
pub fn delete_owned() {
    for (object, name) in owned().drain(..) {
        let _ = try_ip(&[object, "delete", &name]);
    }
}

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
    succeeded(args, &try_ip(args));
}

fn succeeded(args: &[&str], out: &std::process::Output) {
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn try_ip(args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2)")
}

/// A name for this process's `n`-th object of kind `prefix` (a bridge, a
/// veth end): the whole process id and `n`, apart, so that no two live
/// processes share one; at most 14 characters, within an interface name's
/// 15.
fn own_name(prefix: &str, n: u32) -> String {
    format!("{prefix}{}-{n}", std::process::id())
}

/// Runs `ip add_args` (an `add` of `name`); if `name` exists already, it is
/// a leftover of a dead process that had this process's id (killed before
/// it could delete it): `ip delete_args` removes it, and the add is made
/// again.
fn add_own(name: &str, add_args: &[&str], delete_args: &[&str]) {
    let out = try_ip(add_args);
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("File exists") {
        eprintln!("floki-tests: {name} was left by a dead process with this process's id: deleted");
        let _ = try_ip(delete_args);
        ip(add_args);
    } else {
        succeeded(add_args, &out);
    }
}

impl NetNs {
    /// Creates a namespace with its loopback up.
    pub fn new(label: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("fk{}-{n}-{label}", std::process::id());
        add_own(&name, &["netns", "add", &name], &["netns", "delete", &name]);
        own("netns", &name);
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
        let (host_if, ns_if) = self.veth_pair("fkh", "fkn");
        ip(&["addr", "add", host_addr, "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &self.name, "addr", "add", ns_addr, "dev", &ns_if]);
        ip(&["-n", &self.name, "link", "set", &ns_if, "up"]);
    }

    /// A new veth pair, one end (named with `host_prefix`) in the caller's
    /// namespace, the other (`ns_prefix`) in this one; their names.
    fn veth_pair(&self, host_prefix: &str, ns_prefix: &str) -> (String, String) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let host_if = own_name(host_prefix, n);
        let ns_if = own_name(ns_prefix, n);
        add_own(
            &host_if,
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns",
                &self.name,
            ],
            &["link", "delete", &host_if],
        );
        (host_if, ns_if)
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
        let (host_if, ns_if) = self.veth_pair("fkv", "fkw");
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
        let name = own_name("fkb", n);
        add_own(
            &name,
            &["link", "add", &name, "type", "bridge"],
            &["link", "delete", &name],
        );
        own("link", &name);
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
        disown(&self.name);
        let _ = Command::new("ip")
            .args(["link", "delete", &self.name])
            .output();
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        disown(&self.name);
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leftover_of_a_dead_process_with_this_id_is_replaced() {
        crate::require_root();
        // What a process with this id left when it was killed.
        let name = own_name("fkt", 9999);
        ip(&["link", "add", &name, "type", "bridge"]);
        ip(&["link", "set", &name, "alias", "leftover"]);
        add_own(
            &name,
            &["link", "add", &name, "type", "bridge"],
            &["link", "delete", &name],
        );
        let shown = try_ip(&["link", "show", &name]);
        ip(&["link", "delete", &name]);
        succeeded(&["link", "show", &name], &shown);
        assert!(
            !String::from_utf8_lossy(&shown.stdout).contains("leftover"),
            "the leftover was kept: {}",
            String::from_utf8_lossy(&shown.stdout)
        );
    }
}
